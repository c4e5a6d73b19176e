"""Preference objectives against hand-computed values, finite differences and edge cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workflow.llm import losses


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


# One instance: policy log-probs l_w = -2, l_j = (-3, -1); reference -2.5 and (-2, -2); beta 0.5.
# Rewards: r_w = 0.5, r_j = (-1, 1).
CASE = dict(policy_chosen=t(-2.0), policy_rejected=t([-3.0, -1.0]), ref_chosen=t(-2.5),
            ref_rejected=t([-2.0, -2.0]))


def softplus(x):  # -log sigmoid(-x), written out independently of torch
    return math.log1p(math.exp(x))


def test_dmpo_by_hand():
    loss, diag = losses.dmpo(**CASE, beta=0.5)
    # -log sigmoid(0.5 * (0.5 - mean(-1, 1))) = log(1 + e^-0.25)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.25)), abs=1e-12)
    assert loss.item() == pytest.approx(0.5759394, abs=1e-6)
    assert diag["reward_accuracy"] == pytest.approx(0.5)
    assert diag["reward_margin"] == pytest.approx(((0.5 + 1) + (0.5 - 1)) / 2)


def test_dmpo_pairwise_by_hand():
    loss, _ = losses.dmpo(**CASE, beta=0.5, pairwise=True)
    expected = (softplus(-0.75) + softplus(0.25)) / 2  # terms 0.5*(0.5+1) and 0.5*(0.5-1)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert loss.item() == pytest.approx(0.606406, abs=1e-6)


def test_sdpo_by_hand():
    loss, _ = losses.sdpo(**CASE, beta=0.5)
    lse = math.log(math.exp(0.5 * (-1 - 0.5)) + math.exp(0.5 * (1 - 0.5)))
    assert loss.item() == pytest.approx(softplus(lse), abs=1e-12)
    assert loss.item() == pytest.approx(1.0139226, abs=1e-6)


def test_dynamicpo_by_hand():
    loss, diag = losses.dynamicpo(**CASE, beta=0.5, margin=6.0, eps=0.0)
    # B = {j: l_j >= -2} = {second}; D = {first}, m_D = -3; a = -2 - (-1) = -1, b = -1 - (-3) = 2
    beta_j = 0.5 * (1 + 0.5 * math.tanh((-1 - 2 - 6) / (1 + 2)))
    assert beta_j == pytest.approx(0.2512363, abs=1e-6)
    assert loss.item() == pytest.approx(softplus(-beta_j * (0.5 - 1.0)), abs=1e-12)
    assert diag["boundary_size"] == 1.0
    assert diag["beta_mean"] == pytest.approx(beta_j)


def test_dynamicpo_empty_boundary_uses_top_kmeans_group():
    l_j = np.array([-1.0, -5.0, -1.2, -9.0, -5.1])
    boundary, beta_j = losses.dynamicpo_weights(t(0.0), t(l_j.tolist()), beta=1.0)
    assert boundary[0].tolist() == [True, False, True, False, False]
    # independent check: scikit-learn's k-means (many restarts) finds the same top cluster
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=3, n_init=20, random_state=0).fit(l_j[:, None])
    top = np.argmax(km.cluster_centers_[:, 0])
    assert (km.labels_ == top).tolist() == boundary[0].tolist()
    # D = the other three, m_D = mean(-5, -9, -5.1)
    m_d = (-5.0 - 9.0 - 5.1) / 3
    a, b = 0.0 - (-1.0), -1.0 - m_d
    assert beta_j[0, 0].item() == pytest.approx(1 + 0.5 * math.tanh((a - b - 6) / (abs(a) + abs(b) + 1e-6)))
    assert beta_j[0, 1].item() == 0.0


def test_dynamicpo_all_negatives_equal():
    boundary, beta_j = losses.dynamicpo_weights(t(0.0), t([-2.0, -2.0, -2.0]), beta=0.1)
    assert boundary.all()  # equal values form one group; D = B, m_D = -2, a = 2, b = 0
    expected = 0.1 * (1 + 0.5 * math.tanh((2 - 0 - 6) / (2 + 0 + 1e-6)))
    assert torch.allclose(beta_j, torch.full_like(beta_j, expected))
    loss, diag = losses.dynamicpo(t(0.0), t([-2.0, -2.0, -2.0]), t(0.0), t([-2.0, -2.0, -2.0]), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))  # all rewards 0
    assert diag["boundary_size"] == 3


def test_top_kmeans_group_small_cases():
    assert losses.top_kmeans_group(np.array([-4.0])).tolist() == [True]
    assert losses.top_kmeans_group(np.array([-4.0, -1.0])).tolist() == [False, True]
    assert losses.top_kmeans_group(np.array([-3.0, -3.0])).tolist() == [True, True]


def test_dpo_by_hand():
    # rewards r = policy - reference: chosen [0.5, 0.0], rejected [-1.0, -0.5]; margins [1.5, 0.5];
    # -log sigmoid(beta m) = log(1 + e^(-beta m)) at beta 0.5: log(1 + e^-0.75), log(1 + e^-0.25)
    loss, _ = losses.dpo(torch.tensor([-1.0, -2.0], dtype=torch.float64),
                         torch.tensor([[-3.0], [-1.5]], dtype=torch.float64),
                         torch.tensor([-1.5, -2.0], dtype=torch.float64),
                         torch.tensor([[-2.0], [-1.0]], dtype=torch.float64), beta=0.5)
    expected = (math.log1p(math.exp(-0.75)) + math.log1p(math.exp(-0.25))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert loss.item() == pytest.approx(0.481405, abs=1e-6)  # 0.386871 and 0.575939


def test_k1_dmpo_and_sdpo_equal_dpo():
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, 1, generator=g, dtype=torch.float64),
            torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, 1, generator=g, dtype=torch.float64)]
    dpo, _ = losses.dpo(*args, beta=0.3)
    assert losses.dmpo(*args, beta=0.3)[0].item() == pytest.approx(dpo.item(), abs=1e-12)
    assert losses.dmpo(*args, beta=0.3, pairwise=True)[0].item() == pytest.approx(dpo.item(), abs=1e-12)
    assert losses.sdpo(*args, beta=0.3)[0].item() == pytest.approx(dpo.item(), abs=1e-12)
    with pytest.raises(ValueError, match="one negative"):
        losses.dpo(args[0], torch.zeros(6, 2, dtype=torch.float64), args[2], torch.zeros(6, 2, dtype=torch.float64))


@pytest.mark.parametrize("name, kwargs", [("dmpo", {}), ("dmpo", {"pairwise": True}), ("sdpo", {})])
def test_gradients_match_finite_differences(name, kwargs):
    g = torch.Generator().manual_seed(1)
    inputs = (torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True),
              torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True),
              torch.randn(3, generator=g, dtype=torch.float64),
              torch.randn(3, 4, generator=g, dtype=torch.float64))
    fn = losses.OBJECTIVES[name]
    assert torch.autograd.gradcheck(lambda pc, pr: fn(pc, pr, *inputs[2:], beta=0.7, **kwargs)[0], inputs[:2])


def test_dynamicpo_gradient_treats_beta_as_constant():
    pc = torch.tensor([-2.0, 0.0], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([[-3.0, -1.0, -0.5], [-1.0, -4.0, -1.5]], dtype=torch.float64, requires_grad=True)
    rc = torch.tensor([-2.5, -0.3], dtype=torch.float64)
    rr = torch.tensor([[-2.0, -2.0, -1.0], [-1.2, -3.0, -1.0]], dtype=torch.float64)
    loss, _ = losses.dynamicpo(pc, pr, rc, rr, beta=0.5)
    loss.backward()
    boundary, beta_j = losses.dynamicpo_weights(pc, pr, beta=0.5)
    size = boundary.sum(1).double()
    z = (beta_j * ((pc - rc)[:, None] - (pr - rr))).sum(1) / size
    dz = -(1 - torch.sigmoid(z)) / len(z)  # d mean(-log sigmoid z) / dz
    expected_pc = dz * beta_j.sum(1) / size
    expected_pr = -dz[:, None] * beta_j / size[:, None]
    assert torch.allclose(pc.grad, expected_pc.detach())
    assert torch.allclose(pr.grad, expected_pr.detach())
    # finite differences on the rewards alone (boundary and beta_j fixed): reference perturbation
    eps = 1e-6
    for i in range(2):
        bumped = rc.clone()
        bumped[i] += eps
        up, _ = losses.dynamicpo(pc.detach(), pr.detach(), bumped, rr, beta=0.5)
        assert (up.item() - loss.item()) / eps == pytest.approx(-expected_pc[i].item(), rel=1e-4)


# ----------------------------------------------------------------------------- LPO4Rec, NAPO, GRPO

def random_inputs(seed: int, batch: int = 5, k: int = 4):
    g = torch.Generator().manual_seed(seed)
    def draw(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * 3

    return [draw(batch), draw(batch, k), draw(batch), draw(batch, k)]


def logsumexp_list(values):  # max-shifted, over a Python list
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def test_lpo4rec_by_hand_and_reference_free():
    loss, diag = losses.lpo4rec(**CASE, beta=0.5)
    # logits 0.5 * (-2, -3, -1) = (-1, -1.5, -0.5); loss = logsumexp - (-1)
    expected = math.log(math.exp(-1) + math.exp(-1.5) + math.exp(-0.5)) + 1
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert loss.item() == pytest.approx(1.1802697, abs=1e-6)
    assert diag["logprob_accuracy"] == pytest.approx(0.5)
    assert diag["p_chosen"] == pytest.approx(math.exp(-expected))
    assert diag["reward_margin"] == pytest.approx(0.5)  # rewards against the reference, as dmpo's
    other_ref, _ = losses.lpo4rec(CASE["policy_chosen"], CASE["policy_rejected"], t(7.0), t([1.0, -9.0]), beta=0.5)
    no_ref, _ = losses.lpo4rec(CASE["policy_chosen"], CASE["policy_rejected"], beta=0.5)
    assert other_ref.item() == loss.item() == no_ref.item()


def test_lpo4rec_against_a_loop():
    pc, pr, rc, rr = random_inputs(2)
    beta = 0.7
    expected = np.mean([logsumexp_list([beta * pc[i].item()] + [beta * v for v in pr[i].tolist()]) - beta * pc[i].item()
                        for i in range(len(pc))])
    assert losses.lpo4rec(pc, pr, rc, rr, beta=beta)[0].item() == pytest.approx(expected, abs=1e-10)


def test_lpo4rec_authors_by_hand():
    # row 0: answer probabilities p = (0.5; 0.25, 0.1), a tail target; row 1: (0.2; 0.6, 0.05), a head one
    pc, pr = t(math.log(0.5), math.log(0.2)), t([math.log(0.25), math.log(0.1)], [math.log(0.6), math.log(0.05)])
    nll, tail = t(1.0, 2.0), torch.tensor([1, 0])
    loss, diag = losses.lpo4rec_authors(pc, pr, nll=nll, tail=tail)  # weight 0.5, temperature 2
    # s_0 = e^0.25 / (e^0.25 + e^0.125 + e^0.05), s_1 = e^0.1 / (e^0.1 + e^0.3 + e^0.025)
    s0 = math.exp(0.25) / (math.exp(0.25) + math.exp(0.125) + math.exp(0.05))
    s1 = math.exp(0.1) / (math.exp(0.1) + math.exp(0.3) + math.exp(0.025))
    w0, w1 = math.e / (math.e + 1), 1 / (math.e + 1)  # softmax of the tail flags (1, 0)
    assert loss.item() == pytest.approx(w0 * (1.0 + 0.5 * s0) + w1 * (2.0 + 0.5 * s1), abs=1e-12)
    assert loss.item() == pytest.approx(1.4469618, abs=1e-6)
    assert diag["lpo_share"] == pytest.approx((s0 + s1) / 2) and diag["tail_share"] == 0.5
    # no tail target in the batch: equal weights, the plain mean (the authors' code sums instead)
    flat, _ = losses.lpo4rec_authors(pc, pr, nll=nll, tail=torch.tensor([0, 0]))
    assert flat.item() == pytest.approx(((1.0 + 0.5 * s0) + (2.0 + 0.5 * s1)) / 2, abs=1e-12)


def test_lpo4rec_authors_against_a_loop():
    pc, pr, _, _ = random_inputs(11, batch=6, k=5)
    pc, pr = -pc.abs() / 3, -pr.abs() / 3  # log-probs: answer probabilities between about 0.05 and 1
    nll = torch.rand(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    tail = torch.tensor([1, 0, 0, 1, 1, 0])
    weight, temperature = 0.7, 1.5
    z = sum(math.exp(f) for f in tail.tolist())
    expected = 0.0
    for i in range(6):
        probs = [math.exp(pc[i].item())] + [math.exp(v) for v in pr[i].tolist()]
        share = math.exp(probs[0] / temperature) / sum(math.exp(q / temperature) for q in probs)
        expected += math.exp(tail[i].item()) / z * (nll[i].item() + weight * share)
    got = losses.lpo4rec_authors(pc, pr, nll=nll, tail=tail, weight=weight, temperature=temperature)[0]
    assert got.item() == pytest.approx(expected, abs=1e-12)
    # the share term is added as it is, so raising the positive's probability raises the loss
    pc.requires_grad_(True)
    losses.lpo4rec_authors(pc, pr, nll=nll.detach(), tail=tail)[0].backward()
    assert (pc.grad > 0).all()
    assert torch.autograd.gradcheck(
        lambda a, b, n: losses.lpo4rec_authors(a, b, nll=n, tail=tail, weight=weight, temperature=temperature)[0],
        (pc.detach().requires_grad_(True), pr.requires_grad_(True), nll.requires_grad_(True)))


def napo_loop(pc, pr, beta, margin, shared=None, mask=None):
    """The authors' per-instance NAPO term (reference-free), written as a Python loop."""
    terms = []
    for i in range(len(pc)):
        negatives = pr[i].tolist()
        if shared is not None:
            negatives += [v for v, keep in zip(shared[i].tolist(), mask[i].tolist()) if keep]
        a = -math.log(sum(math.exp(beta * (l - pc[i].item())) for l in negatives))
        terms.append(softplus(-(a - margin)))
    return sum(terms) / len(terms)


def test_napo_by_hand():
    # l_w = -2, l_j = (-3, -1), beta 0.5: sum_j e^(0.5 (l_j - l_w)) = e^-0.5 + e^0.5; margin 1
    loss, diag = losses.napo(**CASE, beta=0.5, margin=1.0)
    a = -math.log(math.exp(-0.5) + math.exp(0.5))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-(a - 1.0))), abs=1e-12)
    assert loss.item() == pytest.approx(1.9644, abs=1e-4)  # log(1 + e^1.8133)
    assert diag["margin"] == 1.0 and diag["negatives"] == 2
    # reference-free: the reference only changes the reported rewards; margin 0 is S-DPO on l
    assert losses.napo(CASE["policy_chosen"], CASE["policy_rejected"], beta=0.5, margin=1.0)[0].item() == loss.item()
    sdpo = losses.sdpo(CASE["policy_chosen"], CASE["policy_rejected"], t(0.0), t([0.0, 0.0]), beta=0.5)[0]
    assert losses.napo(**CASE, beta=0.5)[0].item() == pytest.approx(sdpo.item(), abs=1e-12)


def test_napo_margin_and_moving_average_by_hand():
    # the authors' first batch: M_bar = 0.9 * 0 + 0.1 * M, gamma = gamma_0 (1 - alpha (M - M_bar))
    average = losses.moving_average(0.0, 2.0, momentum=0.9)
    assert average == pytest.approx(0.2)
    assert losses.napo_margin(2.0, average, margin=1.0, alpha=0.3) == pytest.approx(1.0 - 0.3 * 1.8)
    assert losses.moving_average(0.2, 1.0, momentum=0.9) == pytest.approx(0.28)
    # less confident negatives than usual (higher SASRec scores: maybe liked) shrink the margin
    assert losses.napo_margin(3.0, 1.0, margin=2.0, alpha=0.5) == pytest.approx(0.0)
    assert losses.napo_margin(0.0, 1.0, margin=2.0, alpha=0.5) == pytest.approx(3.0)


def test_napo_against_a_loop():
    pc, pr, rc, rr = random_inputs(3)
    got = losses.napo(pc, pr, rc, rr, beta=0.4, margin=0.7)[0].item()
    assert got == pytest.approx(napo_loop(pc, pr, 0.4, 0.7), abs=1e-10)


def test_napo_shared_negatives_join_the_softmax():
    pc, pr, rc, rr = random_inputs(4, k=2)
    sp = random_inputs(5, k=3)[1]
    joined = losses.napo(pc, torch.cat([pr, sp], 1), beta=0.4, margin=0.3)[0]
    shared, diag = losses.napo(pc, pr, beta=0.4, margin=0.3, shared_policy_rejected=sp)
    assert shared.item() == pytest.approx(joined.item(), abs=1e-12) and diag["negatives"] == 5
    mask = torch.rand(5, 3, generator=torch.Generator().manual_seed(1)) > 0.5
    got = losses.napo(pc, pr, rc, rr, beta=0.4, margin=0.3, shared_policy_rejected=sp, shared_mask=mask)[0].item()
    assert got == pytest.approx(napo_loop(pc, pr, 0.4, 0.3, sp, mask), abs=1e-10)
    none = losses.napo(pc, pr, beta=0.4, margin=0.3, shared_policy_rejected=sp,
                       shared_mask=torch.zeros(5, 3, dtype=torch.bool))[0]
    assert none.item() == pytest.approx(losses.napo(pc, pr, beta=0.4, margin=0.3)[0].item(), abs=1e-12)


def test_grpo_advantages_are_group_normalised():
    adv = losses.grpo_advantages(t([1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]), eps=0.0)
    assert adv[0].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5])  # mean 0.25, sample std 0.5
    assert adv[1].tolist() == [0.0] * 4  # no contrast in the group, no policy gradient (even with eps 0)
    r = np.array([1.0, 1.0, 0.0, 0.0])
    assert adv[2].tolist() == pytest.approx(((r - r.mean()) / r.std(ddof=1)).tolist())
    with pytest.raises(ValueError, match="at least 2"):
        losses.grpo_advantages(t([1.0]))


def grpo_loop(pc, pr, rc, rr, samples, beta, kl_coef, eps=1e-6):
    total_pg, total_kl, n = 0.0, 0.0, len(pc)
    for i in range(n):
        logits = [beta * pc[i].item()] + [beta * v for v in pr[i].tolist()]
        ref = [beta * rc[i].item()] + [beta * v for v in rr[i].tolist()]
        lse, lse_ref = logsumexp_list(logits), logsumexp_list(ref)
        log_p = [v - lse for v in logits]
        log_q = [v - lse_ref for v in ref]
        rewards = [1.0 if s == 0 else 0.0 for s in samples[i]]
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (len(rewards) - 1))
        total_pg += sum(-(r - mean) / (std + eps) * log_p[s] for r, s in zip(rewards, samples[i])) / len(rewards)
        total_kl += sum(math.exp(a) * (a - b) for a, b in zip(log_p, log_q))
    return total_pg / n + kl_coef * total_kl / n


def test_grpo_fixed_samples_by_hand():
    samples = torch.tensor([[0, 2, 2, 1]])
    loss, diag = losses.grpo(**CASE, beta=1.0, kl_coef=0.0, eps=0.0, samples=samples)
    # log p = l - logsumexp(-2, -3, -1); A = (1.5, -0.5, -0.5, -0.5) for rewards (1, 0, 0, 0)
    lse = math.log(math.exp(-2) + math.exp(-3) + math.exp(-1))
    log_p = [-2 - lse, -3 - lse, -1 - lse]
    expected = -(1.5 * log_p[0] - 0.5 * log_p[2] - 0.5 * log_p[2] - 0.5 * log_p[1]) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert loss.item() == pytest.approx(0.125, abs=1e-9)  # sum A = 0, so only the differences count
    assert diag["sample_hit_rate"] == 0.25
    with_kl, diag = losses.grpo(**CASE, beta=1.0, kl_coef=0.5, eps=0.0, samples=samples)
    ref = [-2.5, -2.0, -2.0]
    lse_ref = math.log(sum(math.exp(v) for v in ref))
    kl = sum(math.exp(a) * (a - (b - lse_ref)) for a, b in zip(log_p, ref))
    assert diag["kl"] == pytest.approx(kl, abs=1e-12)
    assert with_kl.item() == pytest.approx(expected + 0.5 * kl, abs=1e-12)


def test_grpo_k3_kl_by_hand():
    samples = torch.tensor([[0, 2, 2, 1]])
    pg, _ = losses.grpo(**CASE, beta=1.0, kl_coef=0.0, eps=0.0, samples=samples)
    loss, diag = losses.grpo(**CASE, beta=1.0, kl_coef=0.5, eps=0.0, samples=samples, kl="k3")
    # d_g = log p_ref(s_g) - log p_theta(s_g), normalised over the candidates (-2, -3, -1) and (-2.5, -2, -2)
    lse, lse_ref = math.log(math.exp(-2) + math.exp(-3) + math.exp(-1)), math.log(math.exp(-2.5) + 2 * math.exp(-2))
    log_p, log_ref = [-2 - lse, -3 - lse, -1 - lse], [-2.5 - lse_ref, -2 - lse_ref, -2 - lse_ref]
    k3 = sum(math.exp(log_ref[s] - log_p[s]) - (log_ref[s] - log_p[s]) - 1 for s in (0, 2, 2, 1)) / 4
    assert diag["kl"] == pytest.approx(k3, abs=1e-12) and k3 == pytest.approx(0.5168158, abs=1e-6)
    assert loss.item() == pytest.approx(pg.item() + 0.5 * k3, abs=1e-12)
    # at the reference the estimator is 0 on every draw, as the exact KL
    same, diag = losses.grpo(**{**CASE, "ref_chosen": CASE["policy_chosen"], "ref_rejected": CASE["policy_rejected"]},
                             kl_coef=1.0, samples=samples, kl="k3")
    assert diag["kl"] == 0.0
    with pytest.raises(ValueError, match="k3"):
        losses.grpo(**CASE, samples=samples, kl="k2")


def test_grpo_against_a_loop():
    pc, pr, rc, rr = random_inputs(7)
    samples = torch.randint(0, 5, (5, 6), generator=torch.Generator().manual_seed(0))
    samples[:, 0] = 0  # every group has a hit
    got = losses.grpo(pc, pr, rc, rr, beta=0.8, kl_coef=0.1, samples=samples)[0].item()
    assert got == pytest.approx(grpo_loop(pc, pr, rc, rr, samples.tolist(), 0.8, 0.1), abs=1e-10)


def test_grpo_samples_with_a_seeded_generator():
    pc, pr, rc, rr = random_inputs(8)
    a = losses.grpo(pc, pr, rc, rr, group_size=16, generator=torch.Generator().manual_seed(3))
    b = losses.grpo(pc, pr, rc, rr, group_size=16, generator=torch.Generator().manual_seed(3))
    assert a[0].item() == b[0].item() and a[1] == b[1]
    # a candidate the policy gives (almost) all the mass is (almost) always drawn
    sure, diag = losses.grpo(t(0.0), t([-50.0, -60.0]), t(0.0), t([-50.0, -60.0]), group_size=32,
                             generator=torch.Generator().manual_seed(0))
    assert diag["sample_hit_rate"] == 1.0 and sure.item() == pytest.approx(0.0, abs=1e-12)  # A = 0, KL = 0


@pytest.mark.parametrize("name, kwargs", [
    ("lpo4rec", {"beta": 0.5}), ("napo", {"beta": 0.5}), ("napo", {"beta": 0.5, "margin": 1.9}),
    ("grpo", {"kl_coef": 0.0, "samples": torch.tensor([[0, 1, 2, 0], [2, 2, 0, 1], [0, 0, 0, 3]])}),
    ("grpo", {"kl_coef": 0.3, "samples": torch.tensor([[0, 1, 2, 0], [2, 2, 0, 1], [0, 0, 0, 3]])}),
])
def test_raising_the_chosen_logprob_lowers_the_loss(name, kwargs):
    pc, pr, rc, rr = random_inputs(9, batch=3, k=3)
    rc, rr = pc.clone(), pr.clone()  # start at the reference: the KL term is at its minimum
    pc.requires_grad_(True)
    loss, _ = losses.OBJECTIVES[name](pc, pr, rc, rr, **kwargs)
    loss.backward()
    assert (pc.grad < 0).all(), pc.grad
    with torch.no_grad():
        higher, _ = losses.OBJECTIVES[name](pc + 0.05, pr, rc, rr, **kwargs)
    assert higher.item() < loss.item()


@pytest.mark.parametrize("name, kwargs", [
    ("lpo4rec", {}), ("napo", {"margin": 0.8}),
    ("napo", {"margin": 0.8, "shared_policy_rejected": torch.randn(3, 5, dtype=torch.float64),
              "shared_mask": torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)}),
    ("grpo", {"kl_coef": 0.2, "samples": torch.tensor([[0, 1, 2, 0], [4, 2, 0, 1], [0, 0, 0, 3]])}),
    ("grpo", {"kl_coef": 0.2, "kl": "k3", "samples": torch.tensor([[0, 1, 2, 0], [4, 2, 0, 1], [0, 0, 0, 3]])})])
def test_new_objectives_gradients_match_finite_differences(name, kwargs):
    pc, pr, rc, rr = random_inputs(10, batch=3, k=4)
    fn = losses.OBJECTIVES[name]
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, rc, rr, beta=0.7, **kwargs)[0],
                                    (pc.requires_grad_(True), pr.requires_grad_(True)))


def test_objective_signature_defaults_equal_the_schemas():
    """config/schema.yaml holds every default: a default an objective keeps in its signature (for
    direct calls) is the one of each method block that names the same key."""
    import inspect

    from workflow.config import validate_block
    from workflow.methods import METHODS

    computed = {("napo", "margin")}  # napo's per-batch gamma, computed from the block's margin (napo_margin)
    checked = 0
    for method, declared in METHODS.items():
        if declared.family != "preference":
            continue
        block = validate_block(method, {})
        for name, param in inspect.signature(losses.OBJECTIVES[declared.objective]).parameters.items():
            if param.default is not inspect.Parameter.empty and name in block and declared.objective == method \
                    and (method, name) not in computed:
                assert param.default == block[name], (method, name, param.default, block[name])
                checked += 1
    assert checked >= 5


def test_catalogue_rewards_by_hand():
    """1 for the target; MiniOneRec's penalty -w_g / sum w, w_g = 1 / log2(g + 2), on the others of a
    beam that holds the target; nothing for a beam without it."""
    w = np.array([1 / math.log2(g + 2) for g in range(4)])
    p = -w / w.sum()  # -0.3904, -0.2463, -0.1952, -0.1681
    hits = torch.tensor([[False, True, False, False], [False, False, False, False], [True, False, False, False]])
    got = losses.catalogue_rewards(hits)
    expected = np.array([[p[0], 1.0, p[2], p[3]], [0, 0, 0, 0], [1.0, p[1], p[2], p[3]]])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    assert p.sum() == pytest.approx(-1.0)
    np.testing.assert_array_equal(losses.catalogue_rewards(hits, rank_penalty=False).numpy(), hits.float().numpy())


def test_grpo_catalogue_against_its_formula_and_gradient():
    """Value: mean over answers of the token mean of -A_g + c (e^d - d - 1); gradient with respect to
    the policy's token log-probs: (-A_g + c (1 - e^d)) / (n_g G B) on real tokens, 0 at padding."""
    torch.manual_seed(0)
    B, G, T, c = 2, 3, 4, 0.3
    policy = torch.randn(B, G, T, dtype=torch.float64).neg().abs().neg().requires_grad_()
    reference = policy.detach() + 0.2 * torch.randn(B, G, T, dtype=torch.float64)
    mask = torch.ones(B, G, T, dtype=torch.bool)
    mask[0, 1, 2:] = False
    mask[1, 2, 1:] = False
    rewards = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    loss, diagnostics = losses.grpo_catalogue(policy, reference, mask, rewards, kl_coef=c, eps=1e-4)
    r = rewards.numpy()
    adv = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)
    p, ref, m = policy.detach().numpy(), reference.numpy(), mask.numpy()
    d = ref - p
    per_token = -adv[..., None] + c * (np.exp(d) - d - 1)
    n = m.sum(-1)
    expected = ((per_token * m).sum(-1) / n).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    grad = (-adv[..., None] + c * (1 - np.exp(d))) / (n[..., None] * G * B) * m
    np.testing.assert_allclose(policy.grad.numpy(), grad, rtol=1e-9, atol=1e-12)
    assert diagnostics["beam_hit_rate"] == 1.0 and diagnostics["target_rank"] == pytest.approx(1.0)
