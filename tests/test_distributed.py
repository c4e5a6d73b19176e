"""Data parallel on the CPU: the SFT stage and the evaluation run as 2 processes (torchrun through
`workflow.launch`, gloo backend) and as 1 process with the same global batch, on a tiny Llama.

The adapters must agree to float32 rounding: each step's two micro-batch gradient sums are added
by the all-reduce instead of by accumulation in one `.grad`, and every other operation is the same
(TOLERANCE below; the measured difference is printed). Also after a SIGKILL of the 2-process job at
its first checkpoint and a rerun. The sharded evaluation must give the same predictions and
metrics as one process, in sample order."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from test_sft import adapter_tensors, cli_args, inputs, tables  # noqa: F401  (inputs: the fixture)
from workflow.llm.train import CHECKPOINT_FILE, checkpoint_dir_for

pytestmark = pytest.mark.slow

# lora_dropout 0: dropout draws differ per rank (each has its own stream), so only a dropout-free
# run is the same computation split differently. 6 samples, batch 2, grad_accum 2: step 1 holds two
# micro-batches (one per rank), step 2 one (rank 1 idles and contributes no gradient).
SFT = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "epochs": 2,
       "lr": 0.01, "batch_size": 2, "grad_accum": 2, "warmup_ratio": 0.1, "weight_decay": 0.0,
       "max_grad_norm": 1.0, "checkpoint_every": 1}
LLM = {"device": "cpu", "dtype": "float32", "max_title_tokens": 8, "max_prompt_tokens": 512}
SPEC = {"llm": LLM, "sft": SFT, "domain": "movie"}
# float32 weights after 4 AdamW steps from the same start: the gradient sums differ by the order of
# one addition (<= 1 ulp of each element), which Adam's normalisation can amplify for elements whose
# second moment is tiny; 1e-5 absolute is ~100x the largest difference measured here
TOLERANCE = 1e-5


def launch(nproc: int, stage_args: list[str], module: str = "workflow.llm.sft") -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, "-m", "workflow.launch", "--nproc", str(nproc), "--", module,
                             *stage_args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher, torchrun and every rank (torchrun starts its workers in sessions of
    their own, so killing the launcher's process group would leave them running)."""
    import psutil

    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=60)
    proc.wait(timeout=60)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_ranks_train_the_one_process_adapter_also_after_a_kill(tiny_model_dir, inputs, tmp_path):
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    finish(launch(1, cli_args(tiny_model_dir, inputs, one, SPEC)))
    out = finish(launch(2, cli_args(tiny_model_dir, inputs, two, SPEC)))
    assert "torch.distributed.run" in out  # two worker processes, not one
    reference = adapter_tensors(one)
    diff = max_difference(adapter_tensors(two), reference)
    print(f"2 ranks against 1 process: max |adapter difference| {diff:.3g}")
    assert diff <= TOLERANCE
    assert not checkpoint_dir_for(two).exists()  # rank 0 removed it once the adapter was saved
    one_log, two_log = pd.read_parquet(one / "train_log.parquet"), pd.read_parquet(two / "train_log.parquet")
    # the logged sums are reduced over ranks: the same losses and token counts as one process
    np.testing.assert_allclose(two_log["loss"], one_log["loss"], rtol=1e-5)
    assert two_log["n_tokens"].tolist() == one_log["n_tokens"].tolist()

    # killed at its first checkpoint (every rank and the launcher), then run again: it resumes
    proc = launch(2, cli_args(tiny_model_dir, inputs, resumed, SPEC))
    state = checkpoint_dir_for(resumed) / CHECKPOINT_FILE
    deadline = time.monotonic() + 300
    while not state.exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    kill_tree(proc)
    assert state.exists() and not resumed.exists(), "the job finished before it could be killed"
    checkpoint = torch.load(state, weights_only=True)
    assert len(checkpoint["rank_rng"]) == 2  # each rank's random state
    out = finish(launch(2, cli_args(tiny_model_dir, inputs, resumed, SPEC)))
    assert "resuming from" in out, out
    diff = max_difference(adapter_tensors(resumed), reference)
    print(f"2 ranks killed and resumed against 1 process: max |adapter difference| {diff:.3g}")
    assert diff <= TOLERANCE


def test_sharded_evaluation_equals_one_process(tiny_model_dir, inputs, tmp_path):
    """10 test samples over 2 ranks (5 + 5), likelihood and generation on a seeded 5-sample subset
    drawn over all samples: predictions and metrics equal one process's, rows in sample order."""
    samples, _ = tables()
    samples.assign(split="test").to_parquet(inputs["samples"])
    evaluation = {"protocols": ["likelihood", "generation"], "max_new_tokens": 6, "batch_size": 3,
                  "generation_samples": 5, "splits": ["test"]}
    spec = json.dumps({"llm": LLM, "evaluation": evaluation, "domain": "movie", "prompt": "candidate"})
    frames = {}
    for nproc in (1, 2):
        pred, metrics = tmp_path / f"pred{nproc}.parquet", tmp_path / f"metrics{nproc}.parquet"
        finish(launch(nproc, ["--model-dir", str(tiny_model_dir), "--samples", str(inputs["samples"]),
                              "--items", str(inputs["items"]), "--spec", spec, "--dataset", "toy",
                              "--run", "base-candidate", "--selection", "none", "--seed", "0", "--threads", "1",
                              "--predictions", str(pred), "--metrics", str(metrics)], module="workflow.llm.evaluate"))
        frames[nproc] = pd.read_parquet(pred), pd.read_parquet(metrics)
    (pred1, metrics1), (pred2, metrics2) = frames[1], frames[2]
    assert len(pred1) == 10 and pred2["sample_id"].tolist() == pred1["sample_id"].tolist()
    assert pred2["generated"].tolist() == pred1["generated"].tolist()
    assert pred1["generated"].notna().sum() == 5  # the subset drawn over all samples, not per shard
    np.testing.assert_allclose(np.stack(pred2["candidate_logprob"]), np.stack(pred1["candidate_logprob"]),
                               rtol=0, atol=1e-5)  # the same samples in other batches (padding)
    pd.testing.assert_frame_equal(metrics2.drop(columns="value"), metrics1.drop(columns="value"))
    np.testing.assert_allclose(metrics2["value"], metrics1["value"], atol=1e-6)
