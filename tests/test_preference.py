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
    ("napo", {"beta": 0.3, "margin_scale": 0.5, "share_negatives": False}, {"beta": 0.3, "margin_scale": 0.5}),
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


def chosen(items, history):
    return {"items": items, "history": history}


def test_sharing_masks_by_hand():
    batch = [chosen(["a", "b", "c"], ["x", "y"]), chosen(["b", "d", "e"], ["y", "z"]), chosen(["f", "a", "d"], [])]
    shareable, similarity = preference.sharing_masks(batch)
    # columns: instance 0's negatives b c | instance 1's d e | instance 2's a d
    assert shareable.tolist() == [
        [False, False, True, True, False, False],  # a is 0's target, b c its own; d once (from 1, not 2)
        [False, True, False, False, True, False],  # b is 1's target, d its own
        [True, True, False, True, False, False],  # a and d are 2's own negatives
    ]
    torch.testing.assert_close(similarity, torch.tensor([[1.0, 1 / 3, 0.0], [1 / 3, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="same number of negatives"):
        preference.sharing_masks([chosen(["a", "b"], []), chosen(["c", "d", "e"], [])])


def napo_by_loop(r, shareable, similarity, beta, scale, min_similarity):
    """NAPO written out per instance (numpy): its own negatives plus the usable ones of the others."""
    k = r.shape[1] - 1
    terms, counts = [], []
    for i in range(len(r)):
        negatives = list(r[i, 1:])
        for j in range(len(r)):
            for m in range(k):
                if j != i and shareable[i, j * k + m] and similarity[i, j] >= min_similarity:
                    negatives.append(r[j, 1 + m])
        gap = r[i, 0] - np.mean(negatives)
        margin = scale / (1 + np.exp(-gap))
        terms.append(np.log1p(np.exp(-(beta * gap - margin))))
        counts.append(len(negatives))
    return np.mean(terms), np.mean(counts)


SHARING_BATCH = [chosen(["a", "b", "c"], ["x", "y"]), chosen(["b", "d", "e"], ["y", "z"]),
                 chosen(["f", "a", "d"], ["x", "y", "z"])]


@pytest.mark.parametrize("min_similarity", [0.0, 0.5, 0.7])
def test_napo_in_batch_sharing_against_a_loop(min_similarity):
    """The loss with shared negatives equals the NAPO formula written out per instance, independent
    of losses.napo."""
    gen = torch.Generator().manual_seed(3)
    policy = torch.randn(3, 3, generator=gen, dtype=torch.float64) - 2
    reference = torch.randn(3, 3, generator=gen, dtype=torch.float64) - 2
    sharing = preference.sharing_masks(SHARING_BATCH)
    beta, scale = 0.5, 0.8
    scorer = lambda model, prompts, answers: (policy.clone(), torch.ones_like(policy))  # noqa: E731
    loss_fn = preference.make_loss_fn("napo", {"beta": beta, "margin_scale": scale, "share_min_similarity": min_similarity},
                                      scorer)
    loss, n, diagnostics = loss_fn(None, ([[1]] * 3, [[[1]] * 3] * 3, reference, sharing))
    expected, negatives = napo_by_loop((policy - reference).numpy(), sharing[0].numpy(), sharing[1].numpy(),
                                       beta, scale, min_similarity)
    assert loss.item() == pytest.approx(expected, rel=1e-6)  # loss_fn works in float32
    assert diagnostics["negatives"] == pytest.approx(negatives)
    if min_similarity == 0.7:  # no pair this similar (Jaccard 1/3, 2/3, 2/3): plain napo
        assert negatives == 2
        plain = preference.make_loss_fn("napo", {"beta": beta, "margin_scale": scale, "share_negatives": False}, scorer)
        assert loss.item() == plain(None, ([[1]] * 3, [[[1]] * 3] * 3, reference))[0].item()


def test_napo_shared_negatives_get_gradient_through_the_instance_that_scored_them():
    """d loss / d policy log-probs (autograd through the shared columns) equals central differences
    of the per-instance loop: a shared negative's gradient reaches the row that scored it."""
    gen = torch.Generator().manual_seed(4)
    policy = (torch.randn(3, 3, generator=gen, dtype=torch.float64) - 2).requires_grad_()
    reference = torch.randn(3, 3, generator=gen, dtype=torch.float64) - 2
    sharing = preference.sharing_masks(SHARING_BATCH)
    scorer = lambda model, prompts, answers: (policy, torch.ones_like(policy))  # noqa: E731
    loss_fn = preference.make_loss_fn("napo", {"beta": 0.5, "margin_scale": 0.8}, scorer)
    loss_fn(None, ([[1]] * 3, [[[1]] * 3] * 3, reference, sharing))[0].backward()
    r, eps = (policy - reference).detach().numpy(), 1e-6
    numeric = np.zeros_like(r)
    for idx in np.ndindex(*r.shape):
        up, down = r.copy(), r.copy()
        up[idx] += eps
        down[idx] -= eps
        # the margin is detached in the objective: differentiate with it held at its value
        numeric[idx] = (napo_fixed_margin(up, r, sharing) - napo_fixed_margin(down, r, sharing)) / (2 * eps)
    np.testing.assert_allclose(policy.grad.numpy(), numeric, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="no item ids"):
        loss_fn(None, ([[1]] * 3, [[[1]] * 3] * 3, reference, None))


def napo_fixed_margin(r, r_margin, sharing, beta=0.5, scale=0.8):
    """napo_by_loop with each margin computed from r_margin (the detached margin's value)."""
    shareable, similarity = sharing[0].numpy(), sharing[1].numpy()
    terms = []
    for i in range(len(r)):
        def pool(x):
            values = list(x[i, 1:])
            for j in range(len(x)):
                for m in range(2):
                    if j != i and shareable[i, j * 2 + m]:
                        values.append(x[j, 1 + m])
            return values
        gap, margin_gap = r[i, 0] - np.mean(pool(r)), r_margin[i, 0] - np.mean(pool(r_margin))
        terms.append(np.log1p(np.exp(-(beta * gap - scale / (1 + np.exp(-margin_gap))))))
    return np.mean(terms)


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
    if method == "napo":  # in-batch sharing on (the schema's default): more negatives than its own k
        assert log["negatives"].max() > METHOD["k"]
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


def test_negatives_table_ranks_the_candidates_and_the_reference_scores_them(tiny_model_dir, inputs, sft_adapter,
                                                                            reference_table, tmp_path, monkeypatch):
    """SPRec with its SFT phase: the negative is the previous model's top-ranked wrong candidate
    (--negatives), the rewards are against the SFT-phase model (--reference)."""
    table = pd.read_parquet(reference_table)
    other = table.assign(candidate_logprob=[-np.asarray(v) for v in table["candidate_logprob"]])  # reversed ranking
    other.to_parquet(tmp_path / "previous.parquet")
    seen = {}
    real = preference.with_negatives

    def spy(examples, k, strategy, seed, full_reference=None, popularity=None):
        chosen = real(examples, k, strategy, seed, full_reference, popularity)
        seen.update(examples=examples, ranking=full_reference, chosen=chosen)
        return chosen

    monkeypatch.setattr(preference, "with_negatives", spy)
    spec = {"llm": LLM, "preference": PREF, "method": {**METHOD, "k": 1, "strategy": "self"}, "domain": "movie"}
    out = tmp_path / "sprec"
    preference.run_preference("sprec", tiny_model_dir, sft_adapter, inputs["samples"], inputs["items"],
                              inputs["selection"], reference_table, spec, 0, out, tmp_path / "previous.parquet")
    rows = dict(zip(table["sample_id"], table["candidate_logprob"]))
    assert len(seen["chosen"]) == len(rows)
    for example, ranking, chosen in zip(seen["examples"], seen["ranking"], seen["chosen"]):
        reference_values = np.asarray(rows[example["sample_id"]])
        np.testing.assert_array_equal(ranking, -reference_values)  # ranked by the other table
        wrong = [j for j in range(len(ranking)) if j != example["target"]]
        assert chosen["order"][1] == max(wrong, key=lambda j: ranking[j])
        np.testing.assert_array_equal(chosen["reference"].numpy(), reference_values[chosen["order"]])  # rewards
    config = json.loads((out / "training_config.json").read_text())["config"]
    assert config["negatives_ranked_by"] == str(tmp_path / "previous.parquet")
    with pytest.raises(ValueError, match="hardest or self"):
        preference.run_preference("dmpo", tiny_model_dir, sft_adapter, inputs["samples"], inputs["items"],
                                  inputs["selection"], reference_table, {**spec, "method": METHOD}, 0,
                                  tmp_path / "dmpo", tmp_path / "previous.parquet")
