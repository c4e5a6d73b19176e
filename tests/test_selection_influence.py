"""DEALRec influence on a tiny SASRec (workflow/selection/influence.py): LiSSA against the exact
solve of the damped Hessian, batched per-sample gradients against a per-sample loop."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import assert_close_float32, assert_within, float32_sum_bound, FLOAT32_EPS
from workflow.selection import influence as inf
from workflow.surrogate import FIXED_MODEL, Surrogate, build_sasrec, cross_entropy_loss

N_ITEMS, MAX_LEN = 12, 4
# Forward and backward through the tiny SASRec (embedding, attention over 4 positions, a 16-wide
# feed-forward, 13 item logits): about 8 chained reductions of at most 32 terms each.
DEPTH = 256


@pytest.fixture(scope="module")
def tiny_surrogate() -> Surrogate:
    """A 1-layer SASRec (hidden 8) with weights large enough for a non-trivial Hessian."""
    hyper = {"model": "SASRec", "n_items": N_ITEMS + 1, "max_seq_length": MAX_LEN, "hidden_size": 8, "n_layers": 1,
             "n_heads": 2, "inner_size": 16, "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2, **FIXED_MODEL}
    torch.manual_seed(0)
    model = build_sasrec(hyper)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" not in name:
                p.copy_(torch.randn_like(p) * 0.5)
    return Surrogate(model=model.eval(), item_ids=[f"i{k}" for k in range(N_ITEMS)], hyper_parameters=hyper)


@pytest.fixture(scope="module")
def train_samples() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for k in range(24):
        history = [f"i{j}" for j in rng.integers(0, N_ITEMS, size=int(rng.integers(1, MAX_LEN + 1)))]
        rows.append({"sample_id": f"s{k:02d}", "split": "train", "history": history, "target": f"i{rng.integers(N_ITEMS)}"})
    rows.append({"sample_id": "v0", "split": "valid", "history": ["i1"], "target": "i2"})
    return pd.DataFrame(rows)


def setup(surrogate, samples, patterns=("trm_encoder.layer.{last}.multi_head_attention.dense.weight",)):
    ids, data = inf.encode_train(surrogate, samples)
    params = inf.parameter_subset(surrogate.model, list(patterns))
    return ids, data, params, inf.sasrec_batch_loss(surrogate.model)


def test_parameter_subset_resolves_last_layer_and_refuses_no_match(tiny_surrogate):
    params = inf.parameter_subset(tiny_surrogate.model, ["trm_encoder.layer.{last}.multi_head_attention.dense.*"])
    assert sorted(params) == ["trm_encoder.layer.0.multi_head_attention.dense.bias",
                              "trm_encoder.layer.0.multi_head_attention.dense.weight"]
    with pytest.raises(ValueError, match="selection.dealrec.influence.params"):
        inf.parameter_subset(tiny_surrogate.model, ["no.such.weight"])


def test_per_sample_gradients_equal_a_per_sample_loop(tiny_surrogate, train_samples):
    ids, data, params, loss = setup(tiny_surrogate, train_samples,
                                    ["trm_encoder.layer.{last}.multi_head_attention.dense.*", "item_embedding.weight"])
    batched = inf.per_sample_grads(loss, params, *data)
    train = train_samples[train_samples["split"] == "train"].sort_values("sample_id")
    named = dict(tiny_surrogate.model.named_parameters())
    for k, row in enumerate(train.itertuples()):
        # the oracle: the surrogate's own loss function and autograd, one sample at a time
        single = cross_entropy_loss(tiny_surrogate, [row.history], [row.target], reduction="mean")
        grads = torch.autograd.grad(single, [named[n] for n in params])
        for name, g in zip(params, grads):
            assert_close_float32(batched[name][k], g, depth=DEPTH, what=f"{name} of {row.sample_id}")
    # v is the mean of the per-sample gradients: the chunked backward sums them in another order
    # and computes each through other kernels (batch 7 against vmap), so the bound is the sum's
    # rounding plus each term's own.
    rows = inf.flat_rows(batched)
    bound = float32_sum_bound(rows, 0) / len(rows) + DEPTH * FLOAT32_EPS * rows.double().abs().amax()
    assert_within(inf.mean_gradient(loss, params, data, chunk=7), rows.mean(0), bound, "mean gradient")


def exact_hessian(loss, params, data) -> torch.Tensor:
    flat = inf.flat(params)
    hessian = torch.func.hessian(lambda x: loss(inf.unflat(x, params), *data))(flat)
    return hessian.double()


def contracting(hessians: list[torch.Tensor]) -> tuple[float, float]:
    """(damping, scale) with |1 - damping - lambda / scale| <= 0.9 for every eigenvalue lambda of
    the given Hessians (the model is not convex: negative eigenvalues need the damping)."""
    top = max(float(torch.linalg.eigvalsh(h).abs().max()) for h in hessians)
    return 0.6, 2 * top + 1


def test_lissa_equals_the_exact_damped_solve(tiny_surrogate, train_samples):
    """Full-batch Hessian each step (hvp_batch >= samples): the recursion converges to
    (H + damping * scale * I)^-1 v; tolerance 1e-5 relative after 300 steps (rate <= 0.9)."""
    ids, data, params, loss = setup(tiny_surrogate, train_samples)
    v = inf.mean_gradient(loss, params, data, chunk=64)
    hessian = exact_hessian(loss, params, data)
    damping, scale = contracting([hessian])
    estimate, trace = inf.lissa(loss, params, data, v, damping=damping, scale=scale, depth=300,
                                hvp_batch=len(ids), seed=0)
    exact = torch.linalg.solve(hessian + damping * scale * torch.eye(len(v), dtype=torch.float64), v.double())
    assert float((estimate.double() - exact).norm() / exact.norm()) < 1e-5
    assert trace[-1]["step"] == 300 and trace[-1]["diff_norm"] < 1e-6 * trace[-1]["estimate_norm"]
    assert trace[0]["diff_norm"] > trace[-1]["diff_norm"]  # the log shows the convergence


def test_lissa_with_one_sample_per_step_is_seeded_and_near_the_solve(tiny_surrogate, train_samples):
    ids, data, params, loss = setup(tiny_surrogate, train_samples)
    v = inf.mean_gradient(loss, params, data, chunk=64)
    hessian = exact_hessian(loss, params, data)
    singles = [exact_hessian(loss, params, tuple(t[k : k + 1] for t in data)) for k in range(len(ids))]
    damping, scale = contracting(singles)
    run = lambda seed: inf.lissa(loss, params, data, v, damping=damping, scale=scale, depth=150, hvp_batch=1,
                                 seed=seed)[0]
    first, again, other = run(3), run(3), run(4)
    assert torch.equal(first, again) and not torch.equal(first, other)
    exact = torch.linalg.solve(hessian + damping * scale * torch.eye(len(v), dtype=torch.float64), v.double())
    # stochastic (single-sample Hessians), but an unbiased step: the estimate lies near the solve
    assert float((first.double() - exact).norm() / exact.norm()) < 0.2


def test_influence_is_the_inner_product_with_each_gradient(tiny_surrogate, train_samples):
    ids, data, params, loss = setup(tiny_surrogate, train_samples)
    h = torch.randn(sum(p.numel() for p in params.values()), generator=torch.Generator().manual_seed(0))
    scores = inf.influence_scores(loss, params, data, h, chunk=5)
    rows = inf.flat_rows(inf.per_sample_grads(loss, params, *data)).double()
    # chunks of 5 against one vmap over all samples: each gradient element may differ by the
    # per-sample bound, which the inner product with h carries as sum_i |h_i| * bound_i
    scale = rows.abs().amax(1, keepdim=True)
    bound = (DEPTH * FLOAT32_EPS * (scale + rows.abs())) @ h.double().abs()
    assert_within(scores, (rows @ h.double()).numpy(), bound, "influence")
    assert list(ids) == sorted(train_samples.loc[train_samples["split"] == "train", "sample_id"])


def test_divergence_is_reported(tiny_surrogate, train_samples):
    ids, data, params, loss = setup(tiny_surrogate, train_samples)
    v = inf.mean_gradient(loss, params, data, chunk=64)
    with pytest.raises(ValueError, match="influence.scale"):
        inf.lissa(loss, params, data, v * 1e30, damping=0.0, scale=1e-30, depth=50, hvp_batch=len(ids), seed=0)


# --- the authors' loss: the sample as one sequence, BCE with one drawn negative per position ----------

def test_bce_data_are_the_next_items_and_seeded_negatives_outside_the_sequence(tiny_surrogate, train_samples):
    ids, (seq, lengths, pos, neg) = inf.encode_train(tiny_surrogate, train_samples, "bce", seed=7)
    index = tiny_surrogate.index_of_item
    train = train_samples[train_samples["split"] == "train"].sort_values("sample_id")
    for k, row in enumerate(train.itertuples()):
        items = [index[i] for i in row.history][-MAX_LEN:]
        n = len(items)
        assert seq[k, :n].tolist() == items and int(lengths[k]) == n
        # position t's positive is the item after it: the next history item, the target after the last
        assert pos[k].tolist() == (items[1:] + [index[row.target]]) + [0] * (MAX_LEN - n)
        drawn = neg[k, :n].tolist()
        assert all(1 <= d < N_ITEMS + 1 for d in drawn) and neg[k, n:].eq(0).all()
        assert not set(drawn) & {index[i] for i in [*row.history, row.target]}
    # seeded by (seed, sample id): the same negatives for a sample scored among fewer samples
    _, (*_, neg_again) = inf.encode_train(tiny_surrogate, train_samples, "bce", seed=7)
    _, (*_, neg_part) = inf.encode_train(tiny_surrogate, train_samples.iloc[5:], "bce", seed=7)
    _, (*_, neg_other) = inf.encode_train(tiny_surrogate, train_samples, "bce", seed=8)
    assert torch.equal(neg, neg_again) and torch.equal(neg_part, neg[5:]) and not torch.equal(neg, neg_other)


def hand_bce(surrogate, seq_row, n, pos_row, neg_row) -> torch.Tensor:
    """The authors' loss of one sample, independently: one forward per prefix through the model's own
    last-position output (RecBole's gather), then -log sigmoid / -log(1 - sigmoid) as written."""
    model = surrogate.model
    table = model.item_embedding.weight
    terms = []
    for t in range(n):
        out = model(seq_row[None, : t + 1], torch.tensor([t + 1]))[0]
        p, q = torch.sigmoid(out @ table[pos_row[t]]), torch.sigmoid(out @ table[neg_row[t]])
        terms.append(-torch.log(p) - torch.log(1 - q))
    return torch.stack(terms).mean()


def test_bce_loss_and_gradients_equal_a_per_prefix_hand_computation(tiny_surrogate, train_samples):
    ids, data = inf.encode_train(tiny_surrogate, train_samples, "bce", seed=3)
    params = inf.parameter_subset(tiny_surrogate.model, ["trm_encoder.layer.{last}.multi_head_attention.dense.weight"])
    loss = inf.sasrec_batch_loss(tiny_surrogate.model, "bce")
    batched = inf.per_sample_grads(loss, params, *data)
    named = dict(tiny_surrogate.model.named_parameters())
    seq, lengths, pos, neg = data
    hand_losses = []
    for k in range(len(ids)):
        n = int(lengths[k])
        hand = hand_bce(tiny_surrogate, seq[k], n, pos[k], neg[k])
        hand_losses.append(hand.detach())
        assert_close_float32(loss(params, *(t[k : k + 1] for t in data)).detach(), hand.detach(), depth=DEPTH,
                             what=f"bce loss of {ids[k]}")
        (g,) = torch.autograd.grad(hand, [named[n_] for n_ in params])
        assert_close_float32(batched[next(iter(params))][k], g, depth=DEPTH, what=f"bce gradient of {ids[k]}")
    # a batch's loss is the mean of its samples' losses
    assert_close_float32(loss(params, *data).detach(), torch.stack(hand_losses).mean(), depth=DEPTH,
                         what="batch bce loss")


def test_bce_influence_runs_end_to_end_and_differs_from_ce(tiny_surrogate, train_samples):
    settings = inf.influence_settings({"dealrec": {"influence": {"depth": 20, "scale": 1e3, "loss": "bce"}}})
    table, trace, _ = inf.compute_influence(tiny_surrogate, train_samples, settings, seed=0)
    again, _, _ = inf.compute_influence(tiny_surrogate, train_samples, settings, seed=0)
    ce, _, _ = inf.compute_influence(tiny_surrogate, train_samples, {**settings, "loss": "ce"}, seed=0)
    assert np.isfinite(table["influence"]).all() and len(trace) == 20
    assert np.array_equal(table["influence"], again["influence"])
    assert not np.allclose(table["influence"], ce["influence"])
    with pytest.raises(ValueError, match="influence.loss"):
        inf.sasrec_batch_loss(tiny_surrogate.model, "bpr")
