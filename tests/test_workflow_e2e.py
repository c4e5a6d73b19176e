"""The whole DAG on a tiny dataset in a real raw format (MovieLens-100K files cut from the embedded
copy), with a tiny Llama as the base model: every rule runs through Snakemake as a user runs it
(the shared run `tiny_run`, see tests/tiny_workflow.py)."""
from __future__ import annotations

import pandas as pd

from tiny_workflow import failure, snakemake


def test_whole_dag_writes_every_artifact(tiny_run):
    results = tiny_run.results
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
    out = snakemake(tiny_run.workdir, tiny_run.configfile, "-n")
    assert out.returncode == 0, failure(out)
    assert "Nothing to be done" in out.stdout + out.stderr
