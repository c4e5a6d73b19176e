"""The whole DAG on a tiny dataset in a real raw format (MovieLens-100K files cut from the embedded
copy), with a tiny Llama as the base model: every rule runs through Snakemake as a user runs it."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import build_tiny_llama

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


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
        "datasets": {"tiny": {"format": "movielens-100k", "path": str(tmp / "raw"), "domain": "movie"}},
        "prepare": {"kcore": 3, "max_history": 5, "n_candidates": 5,
                    "max_samples": {"valid": 6, "test": 8}},
        "surrogate": {"hidden_size": 16, "n_layers": 1, "n_heads": 1, "inner_size": 32,
                      "epochs": 2, "patience": 1, "batch_size": 64},
        "llm": {"base_model": str(model_dir), "dtype": "float32"},
        "sft": {"epochs": 1, "batch_size": 2, "grad_accum": 1, "lora_r": 4, "lora_alpha": 8},
        "selection": {"strategies": ["random"], "budget": 8},
        "evaluation": {"max_new_tokens": 6, "batch_size": 4},
        "preference": {"batch_size": 2, "grad_accum": 1},
        "dmpo": {"k": 2}, "sdpo": {"k": 2}, "dynamicpo": {"k": 3},
        "methods": ["base", "sft", "dmpo", "sdpo", "dynamicpo"],
        "summary": {"bootstrap": 50},
    }


def snakemake(workdir: Path, configfile: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--replace-workflow-config", "--cores", "2", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, smollm_tokenizer_dir):
    tmp = tmp_path_factory.mktemp("e2e")
    write_tiny_movielens(tmp / "raw")
    model_dir = build_tiny_llama(tmp / "tiny-llama", smollm_tokenizer_dir)
    configfile = tmp / "config.yaml"
    configfile.write_text(yaml.safe_dump(tiny_config(tmp, model_dir)))
    work = tmp / "work"
    out = snakemake(work, configfile)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-8000:]
    return work, configfile


def test_whole_dag_writes_every_artifact(tiny_run):
    work, _ = tiny_run
    results = work / "results"
    for rel in ["tiny/data/interactions.parquet", "tiny/data/items.parquet", "tiny/data/samples.parquet",
                "summary.parquet", "summary.md"]:
        assert (results / rel).is_file(), rel
    summary = pd.read_parquet(results / "summary.parquet")
    assert {"dataset", "method", "selection", "protocol", "metric", "value", "n"} <= set(summary.columns)
    assert set(summary["dataset"]) == {"tiny"}
    assert summary["value"].notna().all()
    assert set(summary["method"]) == {"sasrec", "base", "sft", "dmpo", "sdpo", "dynamicpo"}
    llm = summary[summary["method"] != "sasrec"]
    assert {"likelihood", "generation", "grounded"} <= set(llm["protocol"])
    assert set(summary.loc[summary["method"] == "sasrec", "protocol"]) == {"likelihood", "full_ranking"}
    # every LLM run is scored on the same test samples as the surrogate
    samples = pd.read_parquet(results / "tiny/data/samples.parquet")
    n_test = int((samples["split"] == "test").sum())
    likelihood = summary[(summary["protocol"] == "likelihood") & (summary["metric"] == "hr@1")]
    assert set(likelihood["n"]) == {n_test}
    for method in ["sft", "dmpo", "sdpo", "dynamicpo"]:
        assert (results / f"tiny/llm/{method}/random/adapter/adapter_model.safetensors").is_file()
    assert (results / "tiny/surrogate/item_embeddings.parquet").is_file()


def test_rerun_has_nothing_to_do(tiny_run):
    work, configfile = tiny_run
    out = snakemake(work, configfile, "-n")
    assert out.returncode == 0, out.stderr[-4000:]
    assert "Nothing to be done" in out.stdout + out.stderr
