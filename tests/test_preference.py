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
from workflow.llm import data, evaluate, losses, preference, reference, sft
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


def test_self_strategy_is_hardest_with_one_negative():
    rng = np.random.default_rng(0)
    ref = np.array([-5.0, -1.0, -3.0, -0.5, -9.0])
    assert preference.choose_negatives(5, 3, 1, "self", rng, ref) == [1]  # the target's -0.5 is skipped
    hardest = preference.choose_negatives(5, 1, 1, "hardest", rng, ref)
    assert preference.choose_negatives(5, 1, 1, "self", rng, ref) == hardest == [3]
    with pytest.raises(ValueError, match="exactly one negative"):
        preference.choose_negatives(5, 1, 2, "self", rng, ref)
    with pytest.raises(ValueError, match="reference log-probs"):
        preference.choose_negatives(5, 1, 1, "self", rng)


@pytest.mark.parametrize("strategy", ["tail", "head"])
def test_popularity_strategies_draw_by_inverse_or_direct_popularity(strategy):
    popularity = np.array([99, 5, 0, 3, 999])  # the target (index 1) never drawn
    weights = {j: (1 / (1 + c) if strategy == "tail" else 1 + c) for j, c in enumerate(popularity) if j != 1}
    total = sum(weights.values())
    rng = np.random.default_rng(0)
    draws = [preference.choose_negatives(5, 1, 1, strategy, rng, popularity=popularity)[0] for _ in range(4000)]
    for j, w in weights.items():
        assert draws.count(j) / len(draws) == pytest.approx(w / total, abs=0.03), j
    pairs = [preference.choose_negatives(5, 1, 3, strategy, rng, popularity=popularity) for _ in range(50)]
    assert all(1 not in p and len(set(p)) == 3 and p == sorted(p) for p in pairs)
    again = np.random.default_rng(7), np.random.default_rng(7)
    assert (preference.choose_negatives(5, 1, 2, strategy, again[0], popularity=popularity)
            == preference.choose_negatives(5, 1, 2, strategy, again[1], popularity=popularity))
    with pytest.raises(ValueError, match="popularity"):
        preference.choose_negatives(5, 1, 2, strategy, rng)


def test_item_popularity_counts_train_histories_and_targets():
    samples = pd.DataFrame({"split": ["train", "train", "test"], "history": [["a", "b"], ["a"], ["a", "c"]],
                            "target": ["b", "c", "d"]})
    assert preference.item_popularity(samples) == {"a": 2, "b": 2, "c": 1}


def test_with_negatives_tail_prefers_unpopular_items_and_counts_targets_without_popularity():
    def example(candidates, target):
        return {"prompt": [1], "answers": [[i] for i in range(len(candidates))], "candidates": candidates,
                "target": target}

    # "hot" is the target of 30 examples: without a popularity table it counts 30, "cold1/2" count 0
    examples = [example(["hot", "cold1", "cold2", f"x{i}"], 0) for i in range(30)]
    examples += [example(["hot", "cold1", "cold2", f"y{i}"], 3) for i in range(300)]
    chosen = preference.with_negatives(examples, 1, "tail", seed=0)
    assert all(c["order"][0] == e["target"] for c, e in zip(chosen, examples))
    picks = [c["order"][1] for c in chosen[30:]]
    assert picks.count(0) / len(picks) < 0.1  # weight 1/31 against 1 and 1: about 1.6%
    # an explicit popularity table replaces the count: "hot" unseen, the cold ones very popular
    table = {"cold1": 1000, "cold2": 1000}
    given = preference.with_negatives(examples, 1, "tail", seed=0, popularity=table)
    picks = [c["order"][1] for c in given[30:]]
    assert picks.count(0) / len(picks) > 0.9
    assert given == preference.with_negatives(examples, 1, "tail", seed=0, popularity=table)  # seeded


@pytest.mark.parametrize("method, cfg, kwargs", [
    ("lpo4rec", {"beta": 0.7}, {"beta": 0.7}),
    ("napo", {"beta": 0.3, "margin_scale": 0.5}, {"beta": 0.3, "margin_scale": 0.5}),
    ("sprec", {"beta": 0.4, "rounds": 1}, {"beta": 0.4}),
])
def test_make_loss_fn_passes_the_method_block(method, cfg, kwargs):
    policy = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -2.0]])
    if method == "sprec":
        policy = policy[:, :2]
    reference = policy - 0.25 * torch.arange(policy.shape[1])
    scorer = lambda model, prompts, answers: (policy.clone(), torch.ones_like(policy))  # noqa: E731
    loss, n, diagnostics = preference.make_loss_fn(method, cfg, scorer)(None, ([[1], [2]], [[[1]] * 3] * 2, reference))
    objective = losses.OBJECTIVES["dpo" if method == "sprec" else method]
    expected, _ = objective(policy[:, 0], policy[:, 1:], reference[:, 0], reference[:, 1:], **kwargs)
    assert n == 2 and loss.item() == pytest.approx(expected.item())
    assert "reward_accuracy" in diagnostics


def test_make_loss_fn_grpo_samples_from_the_global_generator():
    policy = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -2.0]])
    scorer = lambda model, prompts, answers: (policy.clone(), torch.ones_like(policy))  # noqa: E731
    loss_fn = preference.make_loss_fn("grpo", {"beta": 1.0, "group_size": 4, "kl_coef": 0.1}, scorer)
    batch = ([[1], [2]], [[[1]] * 3] * 2, policy.clone())
    torch.manual_seed(5)
    first = loss_fn(None, batch)
    torch.manual_seed(5)
    assert loss_fn(None, batch)[0].item() == first[0].item()
    assert first[2]["kl"] == pytest.approx(0.0)


def test_sprec_settings():
    cfg = preference.settings("sprec", {"llm": LLM, "preference": PREF})["cfg"]
    assert cfg["k"] == 1 and cfg["strategy"] == "self" and cfg["rounds"] == 1
    with pytest.raises(ValueError, match="sprec.k"):
        preference.settings("sprec", {"method": {"k": 3}})


def test_settings_of_the_new_methods():
    cfg = preference.settings("lpo4rec", {"llm": LLM, "preference": PREF})["cfg"]
    assert cfg["strategy"] == "tail" and cfg["beta"] == 1.0
    cfg = preference.settings("grpo", {"llm": LLM, "preference": PREF})["cfg"]
    assert cfg["strategy"] == "all" and cfg["group_size"] == 8 and cfg["kl_coef"] == 0.04
    assert preference.settings("napo", {})["cfg"]["margin_scale"] == 0.2


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
    samples = data.read_training_samples(inputs["samples"], inputs["selection"])
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
    samples = data.read_training_samples(inputs["samples"], inputs["selection"])
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


@pytest.mark.parametrize("method", ["dmpo", "sdpo", "dynamicpo", "lpo4rec", "napo", "grpo", "sprec"])
def test_training_from_sft(method, tiny_model_dir, inputs, sft_adapter, reference_table, tmp_path):
    out = tmp_path / method
    overrides = {"sprec": {"k": 1, "strategy": "self"}, "lpo4rec": {"strategy": "tail"}}  # tail: its default
    block = {**METHOD, **overrides.get(method, {})}
    spec = {"llm": LLM, "preference": PREF, "method": block, "domain": "movie"}
    preference.run_preference(method, tiny_model_dir, sft_adapter, inputs["samples"], inputs["items"],
                              inputs["selection"], reference_table, spec, 0, out)
    before, after = adapter_tensors(sft_adapter), adapter_tensors(out)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the policy moved
    log = __import__("pandas").read_parquet(out / "train_log.parquet")
    # First step: the policy IS the reference (the SFT adapter), so every reward is 0 and the loss
    # is the objective's value at r = 0: log 2 for DMPO, DynamicPO and SPRec (DPO), log(1 + k) for
    # S-DPO, log(1 + e^(margin_scale / 2)) for NAPO; GRPO's KL term is 0. LPO4Rec is reference-free.
    expected = {"sdpo": math.log(1 + METHOD["k"]), "napo": math.log(1 + math.exp(0.1))}.get(method, math.log(2))
    if method == "grpo":
        assert log["kl"].iloc[0] == pytest.approx(0.0, abs=1e-4)
    elif method == "lpo4rec":
        assert 0 < log["loss"].iloc[0] < 50 and 0 < log["p_chosen"].iloc[0] < 1
    else:
        assert log["loss"].iloc[0] == pytest.approx(expected, abs=1e-4)
    assert log["reward_margin"].iloc[0] == pytest.approx(0.0, abs=1e-4)
    config = json.loads((out / "training_config.json").read_text())["config"]
    assert config["reference_adapter"] == str(sft_adapter)
    assert config["reference_logprobs"] == str(reference_table)


def test_lpo4rec_trains_without_a_reference_and_the_others_ask_for_one(tiny_model_dir, inputs, sft_adapter,
                                                                       reference_table, tmp_path):
    """LPO4Rec is reference-free: without --reference it trains to the same adapter as with one
    (its loss ignores the reference); an objective that reads it stops with what to pass."""
    spec = {"llm": LLM, "preference": PREF, "method": {**METHOD, "strategy": "tail"}, "domain": "movie"}
    with_ref, without = tmp_path / "with", tmp_path / "without"
    preference.run_preference("lpo4rec", tiny_model_dir, sft_adapter, inputs["samples"], inputs["items"],
                              inputs["selection"], reference_table, spec, 0, with_ref)
    preference.run_preference("lpo4rec", tiny_model_dir, sft_adapter, inputs["samples"], inputs["items"],
                              inputs["selection"], None, spec, 0, without)
    for name, tensor in adapter_tensors(with_ref).items():
        assert torch.equal(tensor, adapter_tensors(without)[name]), name
    config = json.loads((without / "training_config.json").read_text())["config"]
    assert config["reference_logprobs"] is None
    for method, block in (("dmpo", METHOD), ("lpo4rec", {**METHOD, "strategy": "hardest"})):
        with pytest.raises(ValueError, match="pass --reference"):
            preference.run_preference(method, tiny_model_dir, sft_adapter, inputs["samples"], inputs["items"],
                                      inputs["selection"], None, {**spec, "method": block}, 0, tmp_path / method)
