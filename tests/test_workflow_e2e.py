"""The whole DAG on a tiny dataset in a real raw format (MovieLens-100K files cut from the embedded
copy), with a tiny Llama as the base model: every rule runs through Snakemake as a user runs it
(the shared run `tiny_run`, see tests/tiny_workflow.py)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from tiny_workflow import failure, snakemake
from workflow.io import read_provenance

RUNS = {"base-open", "base-candidate", "sft-open", "dmpo-open", "sdpo-open", "dynamicpo-open", "lpo4rec-open", "napo-open",
        "sprec-open", "sft-candidate", "dmpo-candidate-n4", "llara-candidate", "ilora-open", "soft-open",
        "base-sid", "sft-sid", "dmpo-sid", "rere-sid", "base-cid", "sft-cid"}


def test_whole_dag_writes_every_artifact(tiny_run):
    results = tiny_run.results
    for rel in ["tiny/data/interactions.parquet", "tiny/data/items.parquet", "tiny/data/samples.parquet",
                "tiny/baselines/metrics.parquet", "summary.parquet", "summary.md",
                "tiny/llm/ilora-open/random/gates.png", "tiny/llm/llara-candidate/random/adapter/projector.safetensors",
                "tiny/llm/sft-open/random/self_distilled.parquet", "tiny/llm/dmpo-open/random/explanations.html",
                "tiny/llm/soft-open/random/explanations.parquet"]:
        assert (results / rel).is_file(), rel
    summary = pd.read_parquet(results / "summary.parquet")
    assert {"dataset", "method", "selection", "protocol", "metric", "value", "n"} <= set(summary.columns)
    assert set(summary["dataset"]) == {"tiny"}
    assert summary["value"].notna().all()
    assert set(summary["method"]) == {"random", "popularity", "sasrec"} | RUNS
    # each prompt's runs report the protocols it supports
    protocols = summary.groupby("method")["protocol"].agg(set).to_dict()
    for run in RUNS:
        extra = ({"grounded", "catalogue"} if "-open" in run else {"catalogue"} if "-sid" in run or "-cid" in run
                 else {"generation", "generation_constrained", "likelihood_reversed"})
        assert protocols[run] == {"likelihood", "likelihood_norm"} | extra, (run, protocols[run])
    assert protocols["sasrec"] == protocols["popularity"] == {"likelihood", "full_ranking"}
    # every LLM run is scored on the same test samples as the surrogate and the baselines ...
    samples = pd.read_parquet(results / "tiny/data/samples.parquet")
    n_test = int((samples["split"] == "test").sum())
    likelihood = summary[(summary["protocol"] == "likelihood") & (summary["metric"] == "hr@1")]
    assert set(likelihood["n"]) == {n_test}
    # ... and generation, grounded and catalogue on the same seeded 6 of them
    decoded = summary[summary["protocol"].isin(["generation", "grounded", "generation_constrained", "catalogue"])]
    assert set(decoded["n"]) == {6}
    # the catalogue's beam returns catalogue items only, each once; every row is read against SASRec
    catalogue = summary[summary["protocol"] == "catalogue"]
    assert (catalogue.loc[catalogue["metric"].isin(["invalid", "duplicate"]), "value"] == 0).all()
    assert catalogue.loc[catalogue["metric"] == "hr@10", "delta_vs_sasrec"].notna().all()
    assert "### Whole catalogue" in (results / "summary.md").read_text()
    # semantic IDs: one per ranked item, unique; the sid runs trained the ID tokens beside LoRA
    codes = {}
    for prompt, sources in (("sid", ["title"]), ("cid", ["title", "sasrec"])):
        codes[prompt] = pd.read_parquet(results / f"tiny/data/codes_{prompt}.parquet")
        items = pd.read_parquet(results / f"tiny/data/items_{prompt}.parquet")
        assert codes[prompt]["sid"].is_unique and len(codes[prompt]) == len(items)
        assert read_provenance(results / f"tiny/data/codes_{prompt}.parquet")["config"]["semantic_ids"][
            "embeddings"] == sources  # what each prompt's codes quantise
    assert not codes["sid"]["codes"].equals(codes["cid"]["codes"])
    sid_adapter = json.loads((results / "tiny/llm/sft-sid/random/adapter/adapter_config.json").read_text())
    assert len(sid_adapter["trainable_token_indices"]["embed_tokens"]) > 0
    # constrained decoding names a candidate every time; the free answers' categories sum to 1
    constrained = summary[(summary["protocol"] == "generation_constrained") & (summary["metric"] == "valid")]
    assert len(constrained) and (constrained["value"] == 1).all()
    free = summary[summary["protocol"] == "generation"].pivot_table(index="method", columns="metric", values="value")
    np.testing.assert_allclose(free[["valid", "several", "history", "outside", "nothing"]].sum(axis=1), 1.0)
    assert summary[(summary["protocol"] == "likelihood_reversed") & (summary["metric"] == "top_changed")]["n"].eq(n_test).all()
    random_hr1 = likelihood.loc[likelihood["method"] == "random", "value"].item()
    assert random_hr1 == 1 / 5  # the exact expectation with 5 candidates
    # paired comparisons: a run against the sft it started from and the base model of its prompt
    row = summary[(summary["method"] == "dmpo-candidate-n4") & (summary["protocol"] == "likelihood")].iloc[0]
    assert row["sft_selection"] == "random" and row["base_selection"] == "none"
    assert summary.loc[summary["method"] == "dmpo-open", "delta_vs_popularity"].notna().any()
    for run in {r for r in RUNS if not r.startswith("base-")}:
        adapter = results / f"tiny/llm/{run}/random/adapter"
        weights = "experts.safetensors" if run.startswith("ilora") else "adapter_model.safetensors"
        assert (adapter / weights).is_file() and (adapter / "training_config.json").is_file(), run
    # the nested budget: 4 of the 8 selected samples, under the candidate prompt
    config = json.loads((results / "tiny/llm/sft-candidate-n4/random/adapter/training_config.json").read_text())
    assert config["config"]["n_samples"] == 4 and config["config"]["prompt"] == "candidate"
    assert (results / "tiny/surrogate/item_embeddings.parquet").is_file()
    # SPRec's round 2: an SFT phase from round 1's adapter, then DPO from and against that phase's
    # adapter, its negatives ranked by round 1's log-probs; LPO4Rec reads no reference
    llm = results / "tiny/llm"
    sprec = json.loads((llm / "sprec-open/random/adapter/training_config.json").read_text())["config"]
    assert sprec["reference_adapter"].endswith("tiny/llm/sprec-open/random/sft_phase/adapter")
    assert sprec["reference_logprobs"].endswith("tiny/llm/sprec-open/random/sft_phase/reference_logprobs.parquet")
    assert sprec["negatives_ranked_by"].endswith("tiny/llm/sprec-open-r1/random/reference_logprobs.parquet")
    phase = json.loads((llm / "sprec-open/random/sft_phase/adapter/training_config.json").read_text())["config"]
    assert phase["start_adapter"].endswith("tiny/llm/sprec-open-r1/random/adapter") and phase["sft"]["epochs"] == 1
    lpo4rec = json.loads((llm / "lpo4rec-open/random/adapter/training_config.json").read_text())["config"]
    assert lpo4rec["reference_logprobs"] is None
    # NAPO: reference-free, its auxiliary recommender the surrogate, negatives shared in batches of 4
    napo = json.loads((llm / "napo-open/random/adapter/training_config.json").read_text())["config"]
    assert napo["reference_logprobs"] is None and napo["auxiliary_recommender"].endswith("tiny/surrogate")
    assert pd.read_parquet(llm / "napo-open/random/adapter/train_log.parquet")["negatives"].gt(2).all()
    # SOFT validated each epoch on 3 validation samples and kept the best epoch's adapter
    validation = json.loads((llm / "soft-open/random/adapter/training_config.json").read_text())["config"]["validation"]
    assert 1 <= validation["epochs_trained"] <= 2 and validation["kept_epoch"] == validation["best_epoch"]
    assert set(validation["history"]) == {str(e) for e in range(1, validation["epochs_trained"] + 1)}
    soft_log = pd.read_parquet(llm / "soft-open/random/adapter/train_log.parquet")
    assert soft_log["valid_hr@10"].notna().all()


def test_rerun_has_nothing_to_do(tiny_run):
    out = snakemake(tiny_run.workdir, tiny_run.configfile, "-n")
    assert out.returncode == 0, failure(out)
    assert "Nothing to be done" in out.stdout + out.stderr
