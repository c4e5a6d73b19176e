"""The tiny workflow the end-to-end tests share: MovieLens-100K files cut from the embedded copy, a
config that runs every rule in seconds, and `snakemake` run the way a user runs it. One local run of
it (the session fixture `tiny_run` in conftest.py) is the reference the SLURM, report and
interruption tests compare against."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CORES = 2  # every run of the tiny workflow uses the same thread counts, so their outputs are equal


def write_tiny_movielens(folder: Path, n_users: int = 24, n_items: int = 80) -> None:
    """u.data (tab) and u.item (pipe, latin-1) for the most active users on the most popular items."""
    base = Path(list(importlib.util.find_spec("recbole").submodule_search_locations)[0])
    inter = pd.read_csv(base / "dataset_example/ml-100k/ml-100k.inter", sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    top_items = inter["item_id"].value_counts().index[:n_items]
    inter = inter[inter["item_id"].isin(top_items)]
    top_users = inter["user_id"].value_counts().index[:n_users]
    inter = inter[inter["user_id"].isin(top_users)].sort_values(["user_id", "timestamp", "item_id"])
    folder.mkdir(parents=True)
    inter[["user_id", "item_id", "rating", "timestamp"]].astype(int).to_csv(
        folder / "u.data", sep="\t", header=False, index=False)
    items = pd.read_csv(base / "dataset_example/ml-100k/ml-100k.item", sep="\t")
    items.columns = [c.split(":")[0] for c in items.columns]
    items = items[items["item_id"].isin(top_items)]
    lines = []
    for row in items.itertuples():
        genres = ["0"] * 19
        genres[int(row.item_id) % 19] = "1"
        title = f"{row.movie_title} ({int(row.release_year)})"
        lines.append("|".join([str(row.item_id), title, "01-Jan-1995", "", "http://x"] + genres))
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1", errors="replace"))


def tiny_config(tmp: Path, model_dir: Path) -> dict:
    return {
        "seed": 7,
        # one-thread jobs, two at a time on --cores 2: tiny models gain nothing from a second thread,
        # and a job's start-up (imports) is one-threaded (the SLURM test gives one rule two threads)
        "threads_per_job": 1,
        "datasets": {"tiny": {"format": "movielens-100k", "path": str(tmp / "raw"), "domain": "movie"}},
        "prepare": {"kcore": 3, "max_history": 5, "n_candidates": 5,
                    "max_samples": {"valid": 6, "test": 8}},
        "surrogate": {"hidden_size": 16, "n_layers": 1, "n_heads": 1, "inner_size": 32,
                      "epochs": 2, "patience": 1, "batch_size": 64},
        "llm": {"base_model": str(model_dir), "dtype": "float32"},
        # checkpoint_every 1: the interruption test kills SFT after its first checkpoint
        "sft": {"prompt": "open", "epochs": 1, "batch_size": 2, "grad_accum": 1, "lora_r": 4, "lora_alpha": 8,
                "checkpoint_every": 1},
        "selection": {"strategies": ["random"], "budget": 8},
        # generation and grounded decode 6 of the 8 test samples
        # every protocol, the candidate-prompt switches included (constrained generation, reversed order)
        "evaluation": {"max_new_tokens": 6, "batch_size": 4, "generation_samples": 6, "catalogue_beams": 4,
                       "protocols": ["likelihood", "generation", "grounded", "generation_constrained",
                                     "likelihood_reversed", "catalogue"]},
        # the ID prompts' items: 2 levels of 4 codes (+ the collision level) over the tiny catalogue; sid's
        # of the title embeddings, cid's of the title and the SASRec embeddings side by side
        "semantic_ids": {"levels": 2, "codebook_size": 4, "iterations": 5,
                         "embeddings": {"cid": ["title", "sasrec"]}},
        "preference": {"batch_size": 2, "grad_accum": 1},
        "dmpo": {"k": 2, "prompt": "open"}, "sdpo": {"k": 2, "prompt": "open"}, "dynamicpo": {"k": 3, "prompt": "open"},
        # reference-free (no reference log-probs read), and two self-play rounds (sprec-open-r1, then
        # sprec-open), each with the authors' SFT phase before its DPO
        "lpo4rec": {"k": 2, "prompt": "open"}, "sprec": {"prompt": "open", "rounds": 2, "sft_phase": True},
        # reference-free too, its negatives scored by the surrogate and shared within batches of 4
        "napo": {"k": 2, "prompt": "open"},
        # the hybrid prompt under the candidate prompt (placeholders after history and candidates)
        "llara": {"prompt": "candidate", "batch_size": 2, "grad_accum": 1, "lora_r": 4, "lora_alpha": 8},
        "ilora": {"prompt": "open", "batch_size": 2, "grad_accum": 1, "lora_r": 4, "lora_alpha": 8, "n_experts": 2},
        # SOFT on the sft-open backbone: its 8 self-distilled answers, d measured on 2 probe prompts, early
        # stopping validated on 3 validation samples after each of its 2 epochs
        "soft": {"prompt": "open", "batch_size": 2, "grad_accum": 1, "lora_r": 4, "lora_alpha": 8, "probe_size": 2,
                 "num_beams": 2, "early_stopping": {"metric": "hr@10", "patience": 1, "samples": 3}},
        # both prompts, and a run on a nested 4 of the 8 selected samples (it trains sft-candidate-n4 first)
        # and the ID prompts: sft, dmpo and rere under sid (content IDs), sft under cid (collaborative)
        "methods": ["base", "sft", "dmpo", "sdpo", "dynamicpo", "lpo4rec", "napo", "sprec", "sft-candidate",
                    "dmpo-candidate-n4", "llara", "ilora", "soft", "sft-sid", "dmpo-sid", "rere-sid", "sft-cid"],
        # GRPO over the policy's beam of 3 semantic IDs across the catalogue, its reference online
        "rere": {"prompt": "sid", "group_size": 3, "lr": 0.001, "epochs": 1},
        # explained runs: a preference run and SOFT (both against their sft)
        "explanations": {"n_samples": 4, "methods": ["dmpo-open", "soft-open"]},
        "summary": {"bootstrap": 50},
    }


def snakemake_command(workdir: Path, configfile: Path, *args: str, cores: int | None = CORES) -> list[str]:
    """`snakemake` on the tiny config in `workdir`; `cores=None` passes no --cores."""
    return [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(configfile), "--replace-workflow-config",
            *(["--cores", str(cores)] if cores else []), *args]


def snakemake_env(**extra: str) -> dict[str, str]:
    """The environment a user has after `source .venv/bin/activate` (rules call `python -m ...`)."""
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **extra}


def snakemake(workdir: Path, configfile: Path, *args: str, cores: int | None = CORES,
              env: dict[str, str] | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(snakemake_command(workdir, configfile, *args, cores=cores), env=env or snakemake_env(),
                          capture_output=True, text=True, timeout=timeout)


def failure(out: subprocess.CompletedProcess) -> str:
    """The end of a failed run's output, for an assertion message."""
    return f"exit {out.returncode}\n--- stdout\n{out.stdout[-4000:]}\n--- stderr\n{out.stderr[-8000:]}"


def rules_run(log_text: str, prefix: str = "localrule") -> Counter:
    """How many jobs of each rule a Snakemake log shows (`localrule X:` for local jobs, `rule X:`
    for jobs sent to an executor), the target rule `all` excluded."""
    names = re.findall(rf"^{prefix} (\w+):$", log_text, flags=re.M)
    return Counter(n for n in names if n != "all")


@dataclass(frozen=True)
class TinyRun:
    workdir: Path
    configfile: Path
    log: str  # Snakemake's output of the run

    @property
    def results(self) -> Path:
        return self.workdir / "results"


# Columns that measure time, not results; everything else must be equal between two runs.
TIMING_COLUMNS = {"seconds", "tokens_per_s"}


def result_tables(results: Path) -> dict[str, pd.DataFrame]:
    """Every table a run's results are judged by: the data, the per-sample metrics, the training
    logs (timing columns dropped) and the summary, by path relative to `results`."""
    patterns = ["*/data/*.parquet", "*/selection/*.parquet", "**/metrics.parquet",
                "**/adapter/train_log.parquet", "summary.parquet"]
    tables = {}
    for pattern in patterns:
        for path in sorted(results.glob(pattern)):
            table = pd.read_parquet(path)
            tables[str(path.relative_to(results))] = table.drop(columns=TIMING_COLUMNS & set(table.columns))
    return tables


def assert_same_results(actual: Path, expected: Path, only: str = "") -> None:
    """The result tables under `actual` equal those under `expected` (restricted to paths that
    contain `only`), value for value."""
    want = {k: v for k, v in result_tables(expected).items() if only in k}
    got = {k: v for k, v in result_tables(actual).items() if only in k}
    assert want, f"no result tables matching {only!r} in {expected}"
    assert sorted(got) == sorted(want), f"tables differ: {sorted(set(got) ^ set(want))}"
    for name, table in want.items():
        pd.testing.assert_frame_equal(got[name], table, check_exact=True, obj=name)
