"""Preference trainer (workflow/llm/preference.py) and its reference table (workflow/llm/reference.py):
the shared reference log-probs, negatives, one real run per method."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from test_sft import LLM, SFT, adapter_tensors, inputs  # noqa: F401 (inputs is a fixture)
from workflow.llm import evaluate, preference, reference, sft
from workflow.llm.scoring import candidate_logprobs

METHOD = {"beta": 0.5, "k": 2, "strategy": "random", "gamma": 0.0, "epochs": 1, "lr": 0.01}
PREF = {"batch_size": 2, "grad_accum": 1, "warmup_ratio": 0.0, "checkpoint_every": 0}


def test_choose_negatives_strategies():
    rng = np.random.default_rng(0)
    ref = np.array([-5.0, -1.0, -3.0, -0.5, -9.0])
    assert preference.choose_negatives(5, 1, 2, "hardest", rng, ref) == [3, 2]
    assert preference.choose_negatives(5, 1, 9, "all", rng) == [0, 2, 3, 4]
    picks = {tuple(preference.choose_negatives(5, 1, 2, "random", rng)) for _ in range(50)}
    assert all(1 not in p and len(set(p)) == 2 for p in picks) and len(picks) > 1
    with pytest.raises(ValueError, match="k=5"):
        preference.choose_negatives(5, 1, 5, "random", rng)
    with pytest.raises(ValueError, match="unknown negative strategy"):
        preference.choose_negatives(5, 1, 2, "easy", rng)


def test_settings_merge_and_validate():
    s = preference.settings("dynamicpo", {"llm": LLM, "preference": PREF, "method": {"k": 4}, "prompt": "open"})
    cfg = s["cfg"]
    assert cfg["k"] == 4 and cfg["margin"] == 6.0 and cfg["batch_size"] == 2 and s["domain"] == "item"
    assert s["prompt"] == "open" and s["budget"] is None
    with pytest.raises(ValueError, match="dynamicpo.margin"):
        preference.settings("dynamicpo", {"method": {"margin": "wide"}})
    with pytest.raises(ValueError, match="unknown preference method"):
        preference.settings("ipo", {})


@pytest.fixture
def sft_adapter(tiny_model_dir, inputs, tmp_path):
    out = tmp_path / "sft"
    # no LoRA dropout, so that at the first step the policy equals the reference exactly
    spec = {"llm": LLM, "sft": {**SFT, "epochs": 1, "lora_dropout": 0.0}, "domain": "movie"}
    sft.run_sft(tiny_model_dir, inputs["samples"], inputs["items"], inputs["selection"], spec, 0, out)
    return out


@pytest.fixture
def reference_table(tiny_model_dir, inputs, sft_adapter, tmp_path):
    out = tmp_path / "reference_logprobs.parquet"
    spec = {"llm": LLM, "evaluation": {"batch_size": 4}, "domain": "movie"}
    assert reference.main(["--model-dir", str(tiny_model_dir), "--adapter", str(sft_adapter),
                           "--samples", str(inputs["samples"]), "--items", str(inputs["items"]),
                           "--selection", str(inputs["selection"]), "--spec", json.dumps(spec),
                           "--seed", "0", "--threads", "1", "--out", str(out)]) == 0
    return out


def test_reference_table_equals_the_training_scorer(tiny_model_dir, inputs, sft_adapter, reference_table):
    """The table (prompt-cache path, no-grad attention) holds what the packed training scorer gives
    the SFT model for every candidate, row by row, keyed by sample id."""
    table = pd.read_parquet(reference_table)
    samples = sft.read_training_samples(inputs["samples"], inputs["selection"])
    assert sorted(table["sample_id"]) == sorted(samples["sample_id"])
    model, tokenizer = evaluate.load_for_evaluation(tiny_model_dir, sft_adapter, "cpu", "float32")
    items = pd.read_parquet(inputs["items"])
    examples = preference.preference_examples(samples, items, tokenizer, "movie", LLM)
    with torch.no_grad():
        expected, _ = candidate_logprobs(model, [e["prompt"] for e in examples], [e["answers"] for e in examples])
    got = preference.read_reference(reference_table, examples)
    np.testing.assert_allclose(np.stack(got), expected.numpy(), atol=1e-4, rtol=0)
    by_id = table.set_index("sample_id")
    for example in examples:
        assert list(by_id.loc[example["sample_id"], "candidates"]) == example["candidates"]


def test_read_reference_rejects_other_samples_or_candidates(tiny_model_dir, inputs, reference_table, tmp_path):
    samples = sft.read_training_samples(inputs["samples"], inputs["selection"])
    _, tokenizer = evaluate.load_for_evaluation(tiny_model_dir, None, "cpu", "float32")
    examples = preference.preference_examples(samples, pd.read_parquet(inputs["items"]), tokenizer, "movie", LLM)
    table = pd.read_parquet(reference_table)
    short = tmp_path / "short.parquet"
    table[table["sample_id"] != examples[0]["sample_id"]].to_parquet(short)
    with pytest.raises(ValueError, match=f"short.parquet: no reference log-probs for sample '{examples[0]['sample_id']}'"):
        preference.read_reference(short, examples)
    shuffled = tmp_path / "shuffled.parquet"
    table.assign(candidates=table["candidates"].map(lambda c: list(c)[::-1])).to_parquet(shuffled)
    with pytest.raises(ValueError, match="other candidates"):
        preference.read_reference(shuffled, examples)
    with pytest.raises(ValueError, match="not a reference log-prob table"):
        preference.read_reference(inputs["items"], examples)


@pytest.mark.parametrize("method", ["dmpo", "sdpo", "dynamicpo"])
def test_training_from_sft(method, tiny_model_dir, inputs, sft_adapter, reference_table, tmp_path):
    out = tmp_path / method
    spec = {"llm": LLM, "preference": PREF, "method": METHOD, "domain": "movie"}
    preference.run_preference(method, tiny_model_dir, sft_adapter, inputs["samples"], inputs["items"],
                              inputs["selection"], reference_table, spec, 0, out)
    before, after = adapter_tensors(sft_adapter), adapter_tensors(out)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the policy moved
    log = __import__("pandas").read_parquet(out / "train_log.parquet")
    # First step: the policy IS the reference (the SFT adapter), so every reward is 0 and the loss
    # is the objective's value at r = 0: log 2 for DMPO and DynamicPO, log(1 + k) for S-DPO.
    expected = math.log(1 + METHOD["k"]) if method == "sdpo" else math.log(2)
    assert log["loss"].iloc[0] == pytest.approx(expected, abs=1e-4)
    assert log["reward_margin"].iloc[0] == pytest.approx(0.0, abs=1e-4)
    config = json.loads((out / "training_config.json").read_text())["config"]
    assert config["reference_adapter"] == str(sft_adapter)
    assert config["reference_logprobs"] == str(reference_table)
