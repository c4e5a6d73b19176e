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
