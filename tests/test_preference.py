"""Preference trainer (workflow/llm/preference.py) and its reference table (workflow/llm/reference.py):
the shared reference log-probs, negatives, one real run per method."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from test_llara import surrogate  # noqa: F401 (a fixture)
from test_sft import LLM, SFT, adapter_tensors, inputs  # noqa: F401 (inputs is a fixture)
from workflow import runs
from workflow.llm import data, evaluate, losses, preference, reference, sft
from workflow.llm.scoring import candidate_logprobs
from workflow.methods import NEGATIVES

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


def test_the_negatives_table_says_what_each_strategy_reads():
    """workflow/methods.py NEGATIVES against choose_negatives: each declared strategy draws from the
    inputs the table says it reads, and needs each of them; an unknown one is refused naming them all."""
    rng = np.random.default_rng(0)
    inputs = {"ranked": ("reference", np.zeros(5)), "popularity": ("popularity", np.ones(5)),
              "head": ("head", np.ones(5, dtype=bool))}
    for strategy, declared in NEGATIVES.items():
        reads = dict(value for flag, value in inputs.items() if getattr(declared, flag))
        assert len(preference.choose_negatives(5, 1, 1, strategy, rng, **reads)) == (4 if strategy == "all" else 1)
        for name in reads:
            with pytest.raises(ValueError, match="needs"):
                preference.choose_negatives(5, 1, 1, strategy, rng, **{n: v for n, v in reads.items() if n != name})
    assert runs.RANKED_STRATEGIES == tuple(s for s, d in NEGATIVES.items() if d.ranked)
    with pytest.raises(ValueError, match=f"known: {', '.join(NEGATIVES)}"):
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


def test_head_gumbel_draws_among_head_candidates_uniformly_and_fills_from_the_rest():
    head = np.array([True, True, False, True, True, False])  # the target (index 1) never drawn
    rng = np.random.default_rng(0)
    draws = [preference.choose_negatives(6, 1, 1, "head_gumbel", rng, head=head)[0] for _ in range(3000)]
    assert set(draws) == {0, 3, 4}
    for j in (0, 3, 4):
        assert draws.count(j) / len(draws) == pytest.approx(1 / 3, abs=0.03), j
    # three head negatives there: k 3 takes them all, k 4 one of the two tail candidates besides
    assert preference.choose_negatives(6, 1, 3, "head_gumbel", rng, head=head) == [0, 3, 4]
    four = [preference.choose_negatives(6, 1, 4, "head_gumbel", rng, head=head) for _ in range(50)]
    assert all(len(p) == 4 and set(p) >= {0, 3, 4} and 1 not in p for p in four)
    assert {tuple(sorted(set(p) - {0, 3, 4})) for p in four} == {(2,), (5,)}
    again = np.random.default_rng(7), np.random.default_rng(7)
    assert (preference.choose_negatives(6, 1, 2, "head_gumbel", again[0], head=head)
            == preference.choose_negatives(6, 1, 2, "head_gumbel", again[1], head=head))
    with pytest.raises(ValueError, match="head items"):
        preference.choose_negatives(6, 1, 2, "head_gumbel", rng)


def test_head_items_are_the_most_frequent_share():
    popularity = {"a": 9, "b": 1, "c": 5, "d": 5, "e": 0}
    assert preference.head_items(popularity, 0.8) == {"a", "c", "d", "b"}  # int(0.8 * 5) = 4
    assert preference.head_items(popularity, 0.5) == {"a", "c"}  # int(2.5) = 2; c, d tie: the smaller id
    assert preference.head_items(popularity, 0.1) == set()


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
    ("lpo4rec", {"beta": 0.7, "form": "paper"}, {"beta": 0.7}),
    ("grpo", {"beta": 1.0, "group_size": 4, "kl_coef": 0.1, "kl": "k3"}, {"beta": 1.0, "group_size": 4, "kl_coef": 0.1, "kl": "k3"}),
    ("sprec", {"beta": 0.4, "rounds": 1}, {"beta": 0.4}),
])
def test_make_loss_fn_passes_the_method_block(method, cfg, kwargs):
    policy = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -2.0]])
    if method == "sprec":
        policy = policy[:, :2]
    reference = policy - 0.25 * torch.arange(policy.shape[1])
    scorer = lambda model, prompts, answers: (policy.clone(), torch.ones_like(policy))  # noqa: E731
    torch.manual_seed(0)  # grpo draws its group from torch's generator
    loss, n, diagnostics = preference.make_loss_fn(method, cfg, scorer)(None, ([[1], [2]], [[[1]] * 3] * 2, reference))
    objective = losses.OBJECTIVES["dpo" if method == "sprec" else method]
    torch.manual_seed(0)
    expected, _ = objective(policy[:, 0], policy[:, 1:], reference[:, 0], reference[:, 1:], **kwargs)
    assert n == 2 and loss.item() == pytest.approx(expected.item())
    assert "reward_accuracy" in diagnostics


def test_make_loss_fn_lpo4rec_authors_form_reads_the_tail_flags_and_the_target_nll():
    policy = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -2.0]], dtype=torch.float64)
    n_tokens = torch.tensor([[2.0, 1.0, 1.0], [4.0, 1.0, 1.0]], dtype=torch.float64)
    scorer = lambda model, prompts, answers: (policy.clone(), n_tokens)  # noqa: E731
    cfg = {"beta": 0.7, "form": "authors", "lpo_weight": 0.5, "temperature": 2.0}
    examples = [{"prompt": [1], "answers": [[1]] * 3, "tail": 1}, {"prompt": [2], "answers": [[1]] * 3, "tail": 0}]
    batch = preference.collate(examples)
    assert batch[2] is None and batch[3]["tail"].tolist() == [1, 0]
    loss, n, diagnostics = preference.make_loss_fn("lpo4rec", cfg, scorer)(None, batch)
    expected, _ = losses.lpo4rec_authors(policy[:, 0], policy[:, 1:], nll=torch.tensor([0.5, 0.75], dtype=torch.float64),
                                         tail=torch.tensor([1, 0]), weight=0.5, temperature=2.0)
    assert n == 2 and loss.item() == pytest.approx(expected.item(), abs=1e-6)  # the trainer scores in float32
    assert diagnostics["tail_share"] == 0.5 and "lpo_share" in diagnostics


def chosen(items, repr_, confidence=None):
    return {"items": items, "repr": np.array(repr_, dtype=np.float32),
            "confidence": np.zeros(len(items) - 1) if confidence is None else np.array(confidence)}


# four instances, k = 2, sequence representations r0 (2, 0), r1 (2, 1), r2 (1, -1), r3 (1, 2): dot
# products 0-1 4, 0-2 2, 0-3 2, 1-2 1, 1-3 4, 2-3 -1; instance 2's negative "a" is instance 0's target
SHARING_BATCH = [chosen(["a", "b", "c"], [2.0, 0.0], [0.5, -1.0]), chosen(["d", "e", "f"], [2.0, 1.0], [2.0, 0.0]),
                 chosen(["g", "a", "h"], [1.0, -1.0], [1.0, 3.0]), chosen(["i", "j", "k"], [1.0, 2.0], [-2.0, 1.5])]


def test_napo_inputs_share_with_the_most_similar_others_never_the_own_target():
    inputs = preference.napo_inputs(SHARING_BATCH, share_ratio=0.7)  # floor(0.7 * 3) = 2 others each
    # columns: 0's negatives b c | 1's e f | 2's a h | 3's j k
    assert inputs["shareable"].int().tolist() == [
        [0, 0, 1, 1, 0, 1, 0, 0],  # 1 (dot 4), then 2 and 3 tie at 2: the earlier, 2; not its "a" (0's target)
        [1, 1, 0, 0, 0, 0, 1, 1],  # 0 and 3 tie at 4
        [1, 1, 1, 1, 0, 0, 0, 0],  # 0 (dot 2), 1 (dot 1); not 3 (dot -1)
        [1, 1, 1, 1, 0, 0, 0, 0],  # 1 (dot 4), 0 (dot 2)
    ]
    torch.testing.assert_close(inputs["confidence"], torch.tensor([[0.5, -1.0], [2.0, 0.0], [1.0, 3.0], [-2.0, 1.5]]))
    assert preference.napo_inputs(SHARING_BATCH, share_ratio=0.3)["shareable"].sum() == 0  # floor(0.9) = 0
    assert preference.napo_inputs(SHARING_BATCH, share_ratio=None)["shareable"] is None
    everyone = preference.napo_inputs(SHARING_BATCH, share_ratio=1.0)["shareable"]
    assert everyone.sum() == 4 * 3 * 2 - 1 and not everyone[0, 4]  # all the others' but 0's own target a
    with pytest.raises(ValueError, match="same number of negatives"):
        preference.napo_inputs([chosen(["a", "b"], [1.0]), chosen(["c", "d", "e"], [1.0])], 0.7)


def napo_by_loop(policy, shareable, confidence, average, beta=0.5, margin=0.8, alpha=0.3, momentum=0.9):
    """NAPO as the authors' trainer computes it, per instance (numpy, reference-free): the negatives
    are the own k plus the shared ones; M the mean confidence over all of them, M_bar updated first."""
    B, k = confidence.shape
    pools, scores = [], []
    for i in range(B):
        pool, score = list(policy[i, 1:]), list(confidence[i])
        for j in range(B):
            for m in range(k):
                if shareable is not None and shareable[i, j * k + m]:
                    pool.append(policy[j, 1 + m])
                    score.append(confidence[j, m])
        pools.append(pool)
        scores.extend(score)
    M = np.mean(scores)
    average = momentum * average + (1 - momentum) * M
    gamma = margin * (1 - alpha * (M - average))
    terms = [np.log1p(np.exp(-(-np.log(sum(np.exp(beta * (l - policy[i, 0])) for l in pool)) - gamma)))
             for i, pool in enumerate(pools)]
    return np.mean(terms), average, np.mean([len(p) for p in pools])


NAPO = {"beta": 0.5, "margin": 0.8, "alpha": 0.3, "momentum": 0.9}


@pytest.mark.parametrize("share", [True, False])
def test_napo_loss_fn_against_a_loop_over_two_batches(share):
    """Two batches through one loss function: the softmax over own and shared negatives, and the
    margin from the confidences' moving average carried from batch to batch."""
    gen = torch.Generator().manual_seed(3)
    inputs = preference.napo_inputs(SHARING_BATCH, share_ratio=0.7 if share else None)
    state = preference.napo_state()
    average = 0.0
    for step in range(2):
        policy = torch.randn(4, 3, generator=gen, dtype=torch.float64) - 2
        scorer = lambda model, prompts, answers: (policy.clone(), torch.ones_like(policy))  # noqa: E731
        loss_fn = preference.make_loss_fn("napo", NAPO, scorer, state=state)
        loss, n, diagnostics = loss_fn(None, ([[1]] * 4, [[[1]] * 3] * 4, None, inputs))
        shareable = None if inputs["shareable"] is None else inputs["shareable"].numpy()
        expected, average, negatives = napo_by_loop(policy.numpy(), shareable, inputs["confidence"].double().numpy(),
                                                    average)
        assert loss.item() == pytest.approx(expected, rel=1e-6)  # loss_fn works in float32
        assert float(state["confidence_average"]) == pytest.approx(average, rel=1e-6)
        assert diagnostics["negatives"] == pytest.approx(negatives) and n == 4
    assert negatives == (2 + 4 - 0.25 if share else 2)  # 4 shared each, less 0's own target once


def test_napo_shared_negatives_get_gradient_through_the_instance_that_scored_them():
    """d loss / d policy log-probs (autograd through the shared columns) equals central differences
    of the per-instance loop: a shared negative's gradient reaches the row that scored it."""
    gen = torch.Generator().manual_seed(4)
    policy = (torch.randn(4, 3, generator=gen, dtype=torch.float64) - 2).requires_grad_()
    inputs = preference.napo_inputs(SHARING_BATCH, share_ratio=0.7)
    scorer = lambda model, prompts, answers: (policy, torch.ones_like(policy))  # noqa: E731
    loss_fn = preference.make_loss_fn("napo", NAPO, scorer)
    loss_fn(None, ([[1]] * 4, [[[1]] * 3] * 4, None, inputs))[0].backward()
    l, eps = policy.detach().numpy(), 1e-6
    shareable, confidence = inputs["shareable"].numpy(), inputs["confidence"].double().numpy()
    numeric = np.zeros_like(l)
    for idx in np.ndindex(*l.shape):
        up, down = l.copy(), l.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (napo_by_loop(up, shareable, confidence, 0.0)[0]
                        - napo_by_loop(down, shareable, confidence, 0.0)[0]) / (2 * eps)
    np.testing.assert_allclose(policy.grad.numpy(), numeric, rtol=1e-4, atol=1e-7)
    assert (policy.grad[:, 1:] != 0).all()  # every negative, own or shared, is pushed
    with pytest.raises(ValueError, match="no confidence scores"):
        loss_fn(None, ([[1]] * 4, [[[1]] * 3] * 4, None, None))


def test_napo_scores_are_the_surrogates_dot_products(surrogate, inputs):
    samples = pd.read_parquet(inputs["samples"])
    row = samples.iloc[0]
    target = str(row.target)
    negatives = [str(c) for c in row.candidates if str(c) != target][:2]
    examples = [{"sample_id": str(row.sample_id), "items": [target, *negatives]}]
    preference.napo_scores(examples, surrogate)
    items = pd.read_parquet(surrogate / "item_embeddings.parquet").set_index("item_id")["embedding"]
    reprs = pd.read_parquet(surrogate / "sequence_repr.parquet").set_index("sample_id")["repr"]
    r = np.asarray(reprs[str(row.sample_id)])
    np.testing.assert_allclose(examples[0]["confidence"], [np.dot(items[i], r) for i in negatives], rtol=1e-5)
    np.testing.assert_array_equal(examples[0]["repr"], r)
    with pytest.raises(ValueError, match="no representation of sample 'nobody'"):
        preference.napo_scores([{"sample_id": "nobody", "items": [target, *negatives]}], surrogate)


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
    assert cfg["strategy"] == "head_gumbel" and cfg["beta"] == 1.0 and cfg["form"] == "paper"
    assert (cfg["head_share"], cfg["lpo_weight"], cfg["temperature"]) == (0.8, 0.5, 2.0)  # the authors' main.py
    cfg = preference.settings("grpo", {"llm": LLM, "preference": PREF})["cfg"]
    assert cfg["strategy"] == "all" and cfg["group_size"] == 8 and cfg["kl_coef"] == 0.04 and cfg["kl"] == "exact"
    cfg = preference.settings("napo", {"preference": PREF})["cfg"]  # the authors' napo.sh, batch 4 x 1 here
    assert (cfg["beta"], cfg["margin"], cfg["alpha"], cfg["momentum"], cfg["share_ratio"]) == (1.0, 1.0, 0.3, 0.9, 0.7)
    assert cfg["batch_size"] == 4 and cfg["grad_accum"] == 1 and cfg["share_negatives"]


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
    examples = data.preference_examples(samples, items, tokenizer, "movie", LLM)
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
    examples = data.preference_examples(samples, pd.read_parquet(inputs["items"]), tokenizer, "movie", LLM)
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
def test_training_from_sft(method, tiny_model_dir, inputs, sft_adapter, reference_table, surrogate, tmp_path):
    out = tmp_path / method
    overrides = {"sprec": {"k": 1, "strategy": "self"}, "lpo4rec": {"strategy": "head_gumbel", "head_share": 0.8}}
    block = {**METHOD, **overrides.get(method, {})}
    spec = {"llm": LLM, "preference": PREF, "method": block, "domain": "movie"}
    preference.run_preference(method, tiny_model_dir, sft_adapter, inputs["samples"], inputs["items"],
                              inputs["selection"], reference_table, spec, 0, out,
                              surrogate_dir=surrogate if method == "napo" else None)
    before, after = adapter_tensors(sft_adapter), adapter_tensors(out)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the policy moved
    log = __import__("pandas").read_parquet(out / "train_log.parquet")
    # First step: the policy IS the reference (the SFT adapter), so every reward is 0 and the loss
    # is the objective's value at r = 0: log 2 for DMPO, DynamicPO and SPRec (DPO), log(1 + k) for
    # S-DPO; GRPO's KL term is 0. LPO4Rec and NAPO are reference-free.
    expected = {"sdpo": math.log(1 + METHOD["k"])}.get(method, math.log(2))
    if method == "grpo":
        assert log["kl"].iloc[0] == pytest.approx(0.0, abs=1e-4)
    elif method == "napo":  # first batch: M_bar = 0.1 M, so the margin is gamma_0 (1 - 0.3 * 0.9 M)
        first = log.iloc[0]
        assert first["margin"] == pytest.approx(1.0 - 0.3 * 0.9 * first["confidence"], rel=1e-5)
        assert 0 < first["loss"] < 50
    elif method == "lpo4rec":
        assert 0 < log["loss"].iloc[0] < 50 and 0 < log["p_chosen"].iloc[0] < 1
    else:
        assert log["loss"].iloc[0] == pytest.approx(expected, abs=1e-4)
    assert log["reward_margin"].iloc[0] == pytest.approx(0.0, abs=1e-4)
    if method == "napo":  # in-batch sharing on (the schema's default, batch 4): more negatives than its own k
        assert log["negatives"].max() > METHOD["k"]
    config = json.loads((out / "training_config.json").read_text())["config"]
    if method == "napo":
        assert config["auxiliary_recommender"] == str(surrogate)
    assert config["reference_adapter"] == str(sft_adapter)
    assert config["reference_logprobs"] == str(reference_table)


def test_lpo4rec_authors_form_trains_with_tail_flags(tiny_model_dir, inputs, sft_adapter, tmp_path):
    """form authors: CE + 0.5 x the LPO share, reweighted by tail targets, negatives among head items;
    reference-free like the paper's form."""
    block = {**METHOD, "strategy": "head_gumbel", "head_share": 0.8, "form": "authors", "lpo_weight": 0.5,
             "temperature": 2.0}
    spec = {"llm": LLM, "preference": PREF, "method": block, "domain": "movie"}
    out = preference.run_preference("lpo4rec", tiny_model_dir, sft_adapter, inputs["samples"], inputs["items"],
                                    inputs["selection"], None, spec, 0, tmp_path / "authors")
    log = pd.read_parquet(out / "train_log.parquet")
    k = METHOD["k"]
    # the share of exp(p / 2) lies between 1 / (1 + k e^0.5) and e^0.5 / (e^0.5 + k)
    assert ((log["lpo_share"] > 1 / (1 + k * math.exp(0.5))) & (log["lpo_share"] < math.exp(0.5) / (math.exp(0.5) + k))).all()
    assert log["tail_share"].between(0, 1).all() and (log["nll"] > 0).all()


def test_napo_trains_without_a_reference_and_asks_for_the_surrogate(tiny_model_dir, inputs, sft_adapter, surrogate,
                                                                     tmp_path):
    spec = {"llm": LLM, "preference": PREF, "method": METHOD, "domain": "movie"}
    args = (tiny_model_dir, sft_adapter, inputs["samples"], inputs["items"], inputs["selection"], None, spec, 0)
    with pytest.raises(ValueError, match="pass --surrogate"):
        preference.run_preference("napo", *args, tmp_path / "none")
    out = preference.run_preference("napo", *args, tmp_path / "napo", surrogate_dir=surrogate)
    log = pd.read_parquet(out / "train_log.parquet")
    assert log["margin"].notna().all() and (log["confidence_average"] != 0).all()


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

    def spy(examples, k, strategy, seed, full_reference=None, popularity=None, head=None):
        chosen = real(examples, k, strategy, seed, full_reference, popularity, head)
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


def test_rere_grpo_over_the_catalogue_beam_trains_with_an_online_reference(tiny_model_dir, inputs, sft_adapter, tmp_path):
    """rere: no reference table; at the first step the policy is the frozen reference
    (KL 0); only the policy adapter is saved, with the sft adapter's tensors, moved; the beam's items
    are catalogue items, the history excluded."""
    block = {"group_size": 4, "kl_coef": 0.1, "lr": 0.01, "epochs": 1}
    spec = {"llm": LLM, "preference": PREF, "method": block, "domain": "movie", "prompt": "open"}
    out = preference.run_preference("rere", tiny_model_dir, sft_adapter, inputs["samples"], inputs["items"],
                                    inputs["selection"], None, spec, 0, tmp_path / "grpo")
    before, after = adapter_tensors(sft_adapter), adapter_tensors(out)
    assert before.keys() == after.keys()  # the reference adapter is not saved
    assert any(not torch.equal(before[k], after[k]) for k in before)
    log = pd.read_parquet(out / "train_log.parquet")
    assert log["kl"].iloc[0] == pytest.approx(0.0, abs=1e-6)
    assert log["beam_hit_rate"].between(0, 1).all() and np.isfinite(log["loss"]).all()
    config = json.loads((out / "training_config.json").read_text())["config"]
    assert config["reference"] == "online" and config["reference_adapter"] == str(sft_adapter)
    assert "reference_logprobs" not in config


def test_rere_reference_adapter_is_the_start_and_stays_frozen(tiny_model_dir, sft_adapter, inputs):
    """The reference pass scores with the sft adapter as loaded, after the policy has moved; the
    policy's weights are the trainable ones before and after the switch."""
    from workflow.llm import catalogue_rl
    from workflow.llm.model import load_for_training
    from workflow.llm.scoring import candidate_logprobs as score

    llm = preference.settings("rere", {"llm": LLM, "preference": PREF})["llm"]  # validated: every key
    model, tokenizer, _, _ = load_for_training(tiny_model_dir, llm)
    model = catalogue_rl.attach_with_reference(model, sft_adapter)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default" in n for n in trainable)
    prompts, answers = [[1, 2, 3, 4]], [[[5, 6], [7]]]
    with torch.no_grad():
        start, _ = score(model, prompts, answers)
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05)
        moved, _ = score(model, prompts, answers)
        with catalogue_rl.reference_adapter(model):
            reference, _ = score(model, prompts, answers)
    assert not torch.allclose(moved, start)
    torch.testing.assert_close(reference, start)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
