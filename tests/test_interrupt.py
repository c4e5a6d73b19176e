"""A workflow killed during training completes with `--rerun-incomplete`, and its numbers equal an
uninterrupted run's. A copy of the shared tiny run without its SFT outputs is run again; Snakemake
and the SFT job are SIGKILLed (as a power cut or the OOM killer would) once SFT's first checkpoint
is on disk; the rerun resumes from that checkpoint."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from tiny_workflow import assert_same_results, failure, snakemake, snakemake_command, snakemake_env
from workflow.llm.train import CHECKPOINT_FILE, checkpoint_dir_for

pytestmark = pytest.mark.slow

RUN = "results/tiny/llm/sft-open/random"


def kill_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGKILL Snakemake's process group (Snakemake and the job it runs, as a power cut would) and
    wait until none of them is left."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it had ended by itself
        pass
    proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, "processes of the killed run are still alive"
        time.sleep(0.1)


def test_killed_training_completes_with_rerun_incomplete(tiny_run, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(tiny_run.workdir, work, symlinks=True)  # results and Snakemake's records
    shutil.rmtree(work / RUN)  # the SFT run and its evaluation are still to do
    target = f"{RUN}/test/metrics.parquet"
    checkpoint = checkpoint_dir_for(work / RUN / "adapter") / CHECKPOINT_FILE

    with open(tmp_path / "killed.log", "w") as out:
        proc = subprocess.Popen(snakemake_command(work, tiny_run.configfile, target), env=snakemake_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.exists():  # the tiny config checkpoints every step: SFT is mid-training
            assert proc.poll() is None, "the run ended before SFT wrote a checkpoint:\n" + \
                (tmp_path / "killed.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no SFT checkpoint within 300 s"
            time.sleep(0.02)
    finally:
        kill_group(proc)

    assert not (work / RUN / "adapter").exists(), "SFT finished before the kill"
    # A killed Snakemake leaves its lock behind; --unlock is the documented way out.
    unlocked = snakemake(work, tiny_run.configfile, "--unlock")
    assert unlocked.returncode == 0, failure(unlocked)
    out = snakemake(work, tiny_run.configfile, "--rerun-incomplete", target)
    assert out.returncode == 0, failure(out)
    train_log = (work / "results/logs/tiny/llm/sft-open/random/train.log").read_text()
    assert "resuming from" in train_log, train_log[-3000:]  # from the checkpoint, not from scratch
    assert not checkpoint.parent.exists(), "the finished run left its checkpoint behind"
    # adapter training log and per-sample metrics equal the uninterrupted run's
    assert_same_results(work / "results", tiny_run.results, only="llm/sft-open/")
