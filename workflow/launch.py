"""Start a stage on its GPUs: claim `--gpus` free devices, then run the stage module with one
process per GPU (torchrun, `workflow.llm.distributed`) or as one plain process.

    python -m workflow.launch --gpus 2 -- workflow.llm.sft --model-dir ... --out ...
    python -m workflow.launch --nproc 2 -- workflow.llm.sft ...     # 2 CPU processes (gloo; tests)

GPU choice: a scheduler that hands out GPUs (SLURM, or anything that sets CUDA_VISIBLE_DEVICES)
decides; otherwise (`snakemake --profile profiles/local` on a multi-GPU node, where Snakemake only
counts the `gpu` resource) the launcher takes the first devices no other launcher holds, by an
exclusive lock file per device, held until the stage ends, and sets CUDA_VISIBLE_DEVICES. So jobs
that run side by side get distinct GPUs.

Written by hand: Snakemake's local scheduler counts resources but assigns no device ids, and
torchrun / accelerate launch take the visible devices as given.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

LOCK_DIR = Path(os.environ.get("LLMREC_GPU_LOCKS", Path(tempfile.gettempdir()) / "llmrec-gpu-locks"))


def visible_gpu_count() -> int:
    """GPUs on this machine (nvidia-smi's count, read without initialising CUDA in this process)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return len([line for line in out.splitlines() if line.strip()])


@contextlib.contextmanager
def claim_gpus(n: int, total: int | None = None, lock_dir: Path = LOCK_DIR) -> Iterator[list[int]]:
    """Exclusive locks on `n` device ids among `total` (non-blocking tries in id order; waits and
    retries while fewer are free); released when the block ends, also when the process dies."""
    import time

    total = visible_gpu_count() if total is None else total
    if n > total:
        raise SystemExit(f"llm.gpu = {n}, but this machine shows {total} GPU(s) (nvidia-smi)")
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        held: list[tuple[int, object]] = []
        for index in range(total):
            handle = open(lock_dir / f"gpu{index}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            held.append((index, handle))
            if len(held) == n:
                break
        if len(held) == n:
            break
        for _, handle in held:
            handle.close()
        time.sleep(5)
    try:
        yield [index for index, _ in held]
    finally:
        for _, handle in held:
            handle.close()


STAGE_ENV = "LLMREC_STAGE_ARGV"  # the stage and its arguments, for each rank (JSON)


def command(module: str, args: Sequence[str], nproc: int) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment): `python -m module args`, or torchrun with `nproc` processes on
    this node, each running `workflow.launch` as a rank that starts the stage. The stage's arguments
    travel in the environment: torchrun's own parser would otherwise read them (argparse resolves
    every `--x` it sees, so a stage's `--run` is taken as an abbreviation of torchrun's `--run-path`)."""
    if nproc <= 1:
        return [sys.executable, "-m", module, *args], {}
    return ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
             "-m", "workflow.launch"], {STAGE_ENV: json.dumps([module, *args])})


def run_rank() -> int:
    """Under torchrun: run the stage module of $LLMREC_STAGE_ARGV as `python -m` would."""
    import runpy

    module, *args = json.loads(os.environ[STAGE_ENV])
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as done:
        return int(done.code or 0) if not isinstance(done.code, str) else 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and os.environ.get(STAGE_ENV) and "LOCAL_RANK" in os.environ:
        return run_rank()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gpus", type=int, default=0, help="GPUs to claim; also the process count (default 0: none)")
    p.add_argument("--nproc", type=int, default=None, help="processes (default: --gpus, at least 1)")
    p.add_argument("module", help="the stage module, e.g. workflow.llm.sft")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the stage's own arguments")
    a = p.parse_args(argv)
    nproc = a.nproc if a.nproc is not None else max(1, a.gpus)
    env = dict(os.environ)
    claim: contextlib.AbstractContextManager = contextlib.nullcontext([])
    if a.gpus and not env.get("CUDA_VISIBLE_DEVICES"):
        claim = claim_gpus(a.gpus)
    with claim as devices:
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
        cmd, extra = command(a.module, a.args[1:] if a.args[:1] == ["--"] else a.args, nproc)
        env.update(extra)
        print(f"launch: {' '.join(cmd)} {extra.get(STAGE_ENV, '')} "
              f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '')})",
              file=sys.stderr, flush=True)
        return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    raise SystemExit(main())
