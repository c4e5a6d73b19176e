"""Preference objectives, one pure function each, side by side (DESIGN section 5).

Every function takes summed answer log-probs (log pi(y|x)) of the policy and of the frozen reference
for the chosen answer, shape [B], and for k negatives, shape [B, k], and returns
(loss: scalar tensor, diagnostics: dict of floats). Rewards are r = log pi_theta - log pi_ref.
The trainers call these and never re-implement them.

SOFT's mixed cross-entropy (`soft_mixed_ce`, at the end) takes the policy's summed log-probs and
token counts of the true and the self-distilled answer of each sample instead (no reference).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

Diagnostics = dict[str, float]


def rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected):
    """r_w [B] and r_j [B, k]."""
    return policy_chosen - ref_chosen, policy_rejected - ref_rejected


def _diagnostics(r_w: torch.Tensor, r_j: torch.Tensor, **extra: float) -> Diagnostics:
    margin = (r_w[:, None] - r_j).detach()
    return {
        "reward_accuracy": float((margin > 0).float().mean()),
        "reward_margin": float(margin.mean()),
        "reward_chosen": float(r_w.detach().mean()),
        "reward_rejected": float(r_j.detach().mean()),
        **extra,
    }


def dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 0.1):
    """Plain DPO on one negative (k must be 1): -log sigmoid(beta (r_w - r_1))."""
    if policy_rejected.shape[-1] != 1:
        raise ValueError(f"dpo takes exactly one negative, got k={policy_rejected.shape[-1]}")
    r_w, r_j = rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    loss = -F.logsigmoid(beta * (r_w - r_j[:, 0])).mean()
    return loss, _diagnostics(r_w, r_j)


def dmpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 0.1, pairwise: bool = False):
    """DMPO (arXiv 2405.16127): -log sigmoid(beta (r_w - mean_j r_j)).

    `pairwise=True` is what the authors' code computes instead: mean_j -log sigmoid(beta (r_w - r_j)).
    """
    r_w, r_j = rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    if pairwise:
        per_instance = -F.logsigmoid(beta * (r_w[:, None] - r_j)).mean(dim=1)
    else:
        per_instance = -F.logsigmoid(beta * (r_w - r_j.mean(dim=1)))
    return per_instance.mean(), _diagnostics(r_w, r_j)


def sdpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 0.1):
    """S-DPO (softmax DPO): -log sigmoid(-log sum_j exp(beta (r_j - r_w)))."""
    r_w, r_j = rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    per_instance = -F.logsigmoid(-torch.logsumexp(beta * (r_j - r_w[:, None]), dim=1))
    return per_instance.mean(), _diagnostics(r_w, r_j)


def top_kmeans_group(values: np.ndarray, n_groups: int = 3) -> np.ndarray:
    """Boolean mask of the 1-D k-means cluster with the highest mean.

    Written by hand: in one dimension the optimal k-means partition is contiguous in sorted order,
    so an exhaustive search over at most two cut points is exact and deterministic (Lloyd's
    iterations, as in scikit-learn, depend on the initialisation). Cuts are only placed between
    distinct values, so equal values always share a group; among equally good partitions the one
    with the fewest groups wins.
    """
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    v = values[order]
    cuts = [i for i in range(1, len(v)) if v[i] > v[i - 1]]  # a group may start at these indices

    def sse(lo: int, hi: int) -> float:
        seg = v[lo:hi]
        return float(((seg - seg.mean()) ** 2).sum())

    best_cost, best_start = sse(0, len(v)), 0  # one group: the top group is everything
    candidates = [(c,) for c in cuts]
    if n_groups >= 3:
        candidates += [(a, b) for i, a in enumerate(cuts) for b in cuts[i + 1:]]
    for split in sorted(candidates, key=len):
        bounds = (0, *split, len(v))
        cost = sum(sse(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1))
        if cost < best_cost - 1e-12:
            best_cost, best_start = cost, split[-1]
    mask = np.zeros(len(v), dtype=bool)
    mask[order[best_start:]] = True
    return mask


def dynamicpo_weights(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, beta: float,
                      margin: float = 6.0, eps: float = 1e-6):
    """DynamicPO's boundary set B [B, k] (bool) and per-negative beta_j [B, k] (0 outside B), detached.

    Per instance, with l the policy log-probs: B = {j : l_j >= l_w}; if empty, the top 1-D k-means
    group (3 groups) of the l_j. D = negatives outside B (D = B when none are outside), m_D its mean
    l. For j in B: a = l_w - l_j, b = l_j - m_D,
    beta_j = beta * (1 + 0.5 * tanh((a - b - margin) / (|a| + |b| + eps))).
    """
    l_w = policy_chosen.detach().double().cpu().numpy()
    l_j = policy_rejected.detach().double().cpu().numpy()
    boundary = l_j >= l_w[:, None]
    for i in np.flatnonzero(~boundary.any(axis=1)):
        boundary[i] = top_kmeans_group(l_j[i])
    outside = ~boundary
    reference_set = np.where(outside.any(axis=1, keepdims=True), outside, boundary)
    m_d = (l_j * reference_set).sum(axis=1) / reference_set.sum(axis=1)
    a = l_w[:, None] - l_j
    b = l_j - m_d[:, None]
    beta_j = beta * (1.0 + 0.5 * np.tanh((a - b - margin) / (np.abs(a) + np.abs(b) + eps)))
    beta_j = np.where(boundary, beta_j, 0.0)
    device, dtype = policy_rejected.device, policy_rejected.dtype
    return torch.from_numpy(boundary).to(device), torch.from_numpy(beta_j).to(device=device, dtype=dtype)


def dynamicpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 0.1,
              margin: float = 6.0, eps: float = 1e-6):
    """DynamicPO (arXiv 2605.00327): -log sigmoid(mean_{j in B} beta_j (r_w - r_j)), with the
    boundary set B and the dual-margin beta_j of `dynamicpo_weights` (detached)."""
    boundary, beta_j = dynamicpo_weights(policy_chosen, policy_rejected, beta, margin, eps)
    r_w, r_j = rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    size = boundary.sum(dim=1)
    logits = (beta_j * (r_w[:, None] - r_j)).sum(dim=1) / size
    loss = -F.logsigmoid(logits).mean()
    return loss, _diagnostics(r_w, r_j, boundary_size=float(size.float().mean()),
                              beta_mean=float(beta_j.sum() / size.sum()))


OBJECTIVES = {"dpo": dpo, "dmpo": dmpo, "sdpo": sdpo, "dynamicpo": dynamicpo}


# ----------------------------------------------------------------------------- SOFT

def soft_mixed_ce(true_logprob, true_tokens, distilled_logprob, distilled_tokens, lam: float):
    """SOFT: (1 - lam) CE(x, y) + lam CE(x, y_hat), y the true answer, y_hat the self-distilled one.

    Inputs [B]: summed answer log-probs and answer token counts. Each CE is the token mean of its
    answers' negative log-likelihood over the batch (SFT's `sft_loss`), so lam = 0 is SFT on the
    true answers and lam = 1 SFT on the self-distilled ones."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"SOFT's lambda must lie in [0, 1], got {lam}")
    ce_true = -true_logprob.sum() / true_tokens.sum()
    ce_distilled = -distilled_logprob.sum() / distilled_tokens.sum()
    loss = (1.0 - lam) * ce_true + lam * ce_distilled
    return loss, {"ce_true": float(ce_true.detach()), "ce_distilled": float(ce_distilled.detach())}
