"""Debian packages some tests need (SLURM, munge, Chromium), installed by the tests themselves:
CI runs `make test` on a fresh machine with nothing installed by hand."""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess

import pytest

_updated = False  # `apt-get update` once per session


def require_commands(commands: dict[str, str], timeout: float = 900) -> None:
    """Make sure each command (key) is on PATH, installing its Debian package (value) when missing.
    Skips the calling test, with the reason, where nothing can be installed (not root or no
    apt-get); under CI (`CI` set) that is a failure instead, as these tests must run there. A
    failed installation always fails."""
    global _updated
    missing = {cmd: pkg for cmd, pkg in commands.items() if shutil.which(cmd) is None}
    if not missing:
        return
    packages = sorted(set(missing.values()))
    reason = None
    if os.geteuid() != 0:
        reason = f"not root: cannot install {', '.join(packages)} (missing {', '.join(missing)})"
    elif shutil.which("apt-get") is None:
        reason = f"no apt-get: cannot install {', '.join(packages)} (missing {', '.join(missing)})"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; on CI this test must run")
        pytest.skip(reason)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # pytest-xdist workers may install at the same time (SLURM in one, Chromium in another): apt
    # waits for the other's dpkg and list locks instead of failing at once
    wait = ["-o", f"DPkg::Lock::Timeout={int(timeout)}"]
    steps = [] if _updated else [["apt-get", *wait, "update", "-qq"]]
    steps.append(["apt-get", *wait, "install", "-y", "-qq", "--no-install-recommends", *packages])
    with open("/tmp/llmrec-tests-apt.lock", "w") as lock:  # one worker's apt-get at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        for cmd in steps:
            try:
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{' '.join(cmd)} took over {timeout:.0f} s")
            if out.returncode != 0:
                pytest.fail(f"{' '.join(cmd)} failed (exit {out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
            _updated = True
    still = [cmd for cmd in missing if shutil.which(cmd) is None]
    assert not still, f"installed {', '.join(packages)} but {', '.join(still)} still not on PATH"
