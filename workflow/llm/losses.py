"""Preference objectives, one pure function each, side by side (DESIGN section 5).

Every function takes summed answer log-probs (log pi(y|x)) of the policy and of the frozen reference
for the chosen answer, shape [B], and for k negatives, shape [B, k], and returns
(loss: scalar tensor, diagnostics: dict of floats). Rewards are r = log pi_theta - log pi_ref.
The trainers call these and never re-implement them.

Notation as DESIGN section 5: l_w, l_j the policy log-probs of the positive and the j-th negative,
r_w, r_j the rewards, sigma the logistic function, each loss the mean over the batch of the
per-instance term given here.

- dpo (k = 1):  -log sigma(beta (r_w - r_1))
- dmpo:         -log sigma(beta (r_w - mean_j r_j));  pairwise: mean_j -log sigma(beta (r_w - r_j))
- sdpo:         -log sigma(-log sum_j exp(beta (r_j - r_w)))
- dynamicpo:    -log sigma(mean_{j in B} beta_j (r_w - r_j))  (B, beta_j: `dynamicpo_weights`)
- lpo4rec (arXiv 2507.02255), reference-free listwise Bradley-Terry over the positive and the k
  negatives:    -log( exp(beta l_w) / (exp(beta l_w) + sum_j exp(beta l_j)) )
                = logsumexp(beta l_w, beta l_1, ..., beta l_k) - beta l_w
  The reference log-probs are accepted (uniform signature) and only enter the diagnostics. The
  negatives are the trainer's (`workflow.llm.preference.choose_negatives`): the paper's adaptive
  negative sampling prioritises tail items by drawing the negatives among the head (popular) items,
  strategy `head_gumbel` (the default).
  `lpo4rec_authors`, the authors' code (Yuhanleeee/LPO4Rec main.py), with p_c = exp(l_c) the model's
  probability of each answer, CE_i the token-mean NLL of the target, w = softmax over the batch of
  the tail-target flags:   sum_i w_i (CE_i + lambda s_i),
                s_i = exp(p_w / tau) / (exp(p_w / tau) + sum_j exp(p_j / tau))  (a share, not its log).
- napo (arXiv 2508.09653; the authors' code, acoding-xuan/NAPO): reference-free (the policy's
  log-probs, as the authors' trainer), negatives N_i = the instance's own k plus the shared ones the
  trainer passes (`shared_*`, [B, m]: the other instances' negatives under their own prompts,
  masked; `workflow.llm.preference.shared_negatives`); a margin gamma per batch (`napo_margin`);
                -log sigma(-log sum_{j in N_i} exp(beta (l_j - l_w)) - gamma)
- grpo (group-relative policy gradient over the listed candidates, after ReRe / MiniOneRec's RL stage): candidates
  c = 0 (the positive), 1..k; p_theta = softmax(beta [l_w, l_1..l_k]), p_ref = the same softmax of
  the reference log-probs (beta = 1 by default: the policy's own relative likelihoods); G candidates
  s_1..s_G drawn from p_theta (detached); R_g = 1[s_g = 0];
  A_g = (R_g - mean_G R) / (std_G R + eps) (std with Bessel's correction, as TRL);
                -mean_g A_g log p_theta(s_g) + kl_coef * KL(p_theta || p_ref),
  KL exact over the 1 + k candidates: sum_c p_theta(c) (log p_theta(c) - log p_ref(c)); or (`kl="k3"`,
  ReRe's and MiniOneRec's estimator) mean_g exp(d_g) - d_g - 1, d_g = log p_ref(s_g) - log p_theta(s_g).
- sprec (SPRec) has no loss of its own: each self-play round is `dpo` with the round's start's
  top-ranked wrong candidate as the one negative (strategy `self`); the start is the sft run, then
  the previous round (workflow/runs.py previous_round), and the reference is the start or, with
  `sprec.sft_phase`, the start trained one epoch further on the positives (rule sprec_sft_phase).

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


def lpo4rec(policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, beta: float = 1.0):
    """LPO4Rec (arXiv 2507.02255): reference-free listwise Bradley-Terry over the positive and the k
    negatives, -log softmax(beta [l_w, l_1..l_k])_0 = logsumexp(beta l) - beta l_w.

    The reference arguments are ignored by the loss (the trainer passes them to every objective); when
    given, the diagnostics report rewards against them as for the other objectives, beside the
    policy's own `logprob_accuracy` (l_w > l_j share) and `p_chosen` (the listwise probability of the
    positive). This is the paper's listwise loss; the authors' code (github Yuhanleeee/LPO4Rec, main.py)
    trains a SASRec model with another one, `lpo4rec_authors`. Here beta is the inverse temperature on
    summed log-probs and the negatives are the run's strategy (`head_gumbel`: among the head items, as
    the authors'; add an SFT term with `gamma`).
    """
    logits = beta * torch.cat([policy_chosen[:, None], policy_rejected], dim=1)
    log_p = torch.log_softmax(logits, dim=1)
    loss = -log_p[:, 0].mean()
    return loss, _reference_free_diagnostics(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                             p_chosen=float(log_p[:, 0].detach().exp().mean()))


def lpo4rec_authors(policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, *, nll, tail,
                    weight: float = 0.5, temperature: float = 2.0):
    """LPO4Rec as the authors' code trains (Yuhanleeee/LPO4Rec main.py, `training_step` with
    `lpo_loss_gumbel`): sum_i w_i (CE_i + weight s_i).

    p = exp([l_w, l_1..l_k]) is the model's probability of each answer (theirs: SASRec's softmax over
    the catalogue); s_i = exp(p_w / temperature) / sum_c exp(p_c / temperature), the positive's
    share itself, not -log of it, added to the loss as they add it (so minimising it lowers the
    positive's share; with p in [0, 1] it stays within [1 / (1 + k e^(1/temperature)),
    e^(1/temperature) / (e^(1/temperature) + k)], about 1 / (1 + k) for small p). `nll` [B] is CE_i, the
    token-mean NLL of the target answer (their CE over the catalogue; here SFT's loss), `tail` [B] 1
    where the target is a tail item; w = softmax(tail) over the batch, so a tail sample weighs e times
    another and the weights sum to 1. Their code sums the terms unweighted when a batch holds no tail
    target (B times the scale of a batch that holds one); here such a batch is the plain mean.
    The reference arguments only enter the diagnostics."""
    p = torch.cat([policy_chosen[:, None], policy_rejected], dim=1).exp()
    share = torch.softmax(p / temperature, dim=1)[:, 0]
    weights = torch.softmax(tail.to(p.dtype), dim=0)
    loss = (weights * (nll + weight * share)).sum()
    return loss, _reference_free_diagnostics(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                             lpo_share=float(share.detach().mean()), nll=float(nll.detach().mean()),
                                             tail_share=float(tail.float().mean()))


def _reference_free_diagnostics(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                **extra: float) -> Diagnostics:
    """A reference-free objective's diagnostics: rewards against the reference when it is given (as the
    other objectives report), else the policy's log-probs, and `logprob_accuracy` (l_w > l_j share)."""
    if ref_chosen is None or ref_rejected is None:
        r_w, r_j = policy_chosen, policy_rejected
    else:
        r_w, r_j = rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    gap = (policy_chosen[:, None] - policy_rejected).detach()
    return _diagnostics(r_w, r_j, logprob_accuracy=float((gap > 0).float().mean()), **extra)


def napo_margin(confidence: float, average: float, margin: float = 1.0, alpha: float = 0.3) -> float:
    """NAPO's dynamic reward margin (the authors' trainer): gamma = margin (1 - alpha (M - M_bar)).

    M is the batch's mean confidence score of its negatives by the auxiliary recommender (SASRec's
    score of the negative item for the user: a high score says the negative may well be liked, a
    likely false negative), M_bar its moving average over the batches so far, this one included
    (`moving_average`). A batch of less trustworthy negatives than usual gets a smaller margin."""
    return margin * (1.0 - alpha * (confidence - average))


def moving_average(average: float, value: float, momentum: float = 0.9) -> float:
    """momentum * average + (1 - momentum) * value (NAPO's M_bar, from 0 at the first batch as the
    authors' trainer: `move_ratio` 0.9)."""
    return momentum * average + (1.0 - momentum) * value


def napo(policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, beta: float = 1.0,
         margin: float = 0.0, shared_policy_rejected=None, shared_mask=None):
    """NAPO (arXiv 2508.09653) as the authors' code computes it (acoding-xuan/NAPO,
    trainer/softmax_dpo_trainer.py): reference-free, softmax over the negatives with a margin,
    -log sigma(A_i - gamma), A_i = -log sum_{j in N_i} exp(beta (l_j - l_w)),
    l the policy's summed answer log-probs; `margin` is gamma (`napo_margin`, one value per batch).

    Shared negatives (in-batch negative sharing) are optional: `shared_policy_rejected` [B, m] are
    log-probs of other instances' negative answers (under their own prompts: the authors reuse the
    batch's computed log-probs, no extra decoding), `shared_mask` [B, m] (bool, default all) which of
    them join row i's N_i. The reference arguments only enter the diagnostics (rewards against the
    reference, as the other objectives report) when given.

    Against the authors' code: their sharing gathers every negative's log-prob across GPUs inside
    `torch.no_grad` and then reads instance i's own negatives from that gathered tensor, so in a
    sharing run no negative gets a gradient (only l_w is pushed up), and on GPU r > 0 row i reads
    GPU 0's instance i; here every negative, own or shared, keeps its gradient through the instance
    that scored it (the method as the paper describes it). Their pool is the global batch (4 GPUs x
    4); here the trainer's micro-batch (`preference.batch_size`)."""
    negatives = policy_rejected
    mask = torch.ones_like(policy_rejected, dtype=torch.bool)
    if shared_policy_rejected is not None:
        negatives = torch.cat([negatives, shared_policy_rejected], dim=1)
        shared = (torch.ones_like(shared_policy_rejected, dtype=torch.bool) if shared_mask is None
                  else shared_mask.bool())
        mask = torch.cat([mask, shared], dim=1)
    gaps = (beta * (negatives - policy_chosen[:, None])).masked_fill(~mask, float("-inf"))
    softmax_term = -torch.logsumexp(gaps, dim=1)  # A_i
    loss = -F.logsigmoid(softmax_term - margin).mean()
    return loss, _reference_free_diagnostics(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                             margin=float(margin), negatives=float(mask.sum(dim=1).float().mean()))


def grpo_advantages(group_rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(R - mean_G R) / (std_G R + eps) per row of [B, G] rewards; std with Bessel's correction
    (torch's default, as TRL's GRPO). A row of equal rewards gets advantage 0."""
    if group_rewards.shape[1] < 2:
        raise ValueError("grpo needs a group of at least 2 samples per instance")
    mean = group_rewards.mean(dim=1, keepdim=True)
    std = group_rewards.std(dim=1, keepdim=True)
    centred = group_rewards - mean
    return torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))


def grpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 1.0, group_size: int = 8,
         kl_coef: float = 0.04, eps: float = 1e-6, samples=None, generator=None, kl: str = "exact"):
    """Group-relative policy gradient over the listed candidates (after ReRe / MiniOneRec's RL stage,
    which sample by constrained beam search over the whole catalogue instead).

    p_theta = softmax(beta [l_w, l_1..l_k]) over the 1 + k candidates (index 0 = the positive; beta an
    inverse temperature, 1 = the policy's own relative likelihoods); G =
    `group_size` candidates are drawn from it (detached, with replacement) unless `samples` [B, G]
    (candidate indices) is given; R_g = 1 if s_g = 0 else 0; A = `grpo_advantages(R)`;
    loss = -mean_{b,g} A_g log p_theta(s_g) + kl_coef * mean_b KL(p_theta || p_ref),
    p_ref = softmax(beta [reference log-probs]), the KL exact over the candidates (`kl="exact"`) or
    ReRe's and MiniOneRec's k3 estimator on the drawn candidates (`kl="k3"`): mean_{b,g} exp(d) - d - 1,
    d = log p_ref(s_g) - log p_theta(s_g) (unbiased for KL(p_theta || p_ref) when s_g ~ p_theta, >= 0).

    One optimisation step per sampled group, so the PPO ratio is 1 and clipping never acts: the
    surrogate's gradient is A grad log p. Sampling uses `generator` (a CPU torch.Generator), else
    torch's global CPU generator (seeded and checkpointed by the trainer).
    """
    log_p = torch.log_softmax(beta * torch.cat([policy_chosen[:, None], policy_rejected], dim=1), dim=1)
    log_ref = torch.log_softmax(beta * torch.cat([ref_chosen[:, None], ref_rejected], dim=1), dim=1)
    if samples is None:
        probs = log_p.detach().exp().double().cpu()
        samples = torch.multinomial(probs, group_size, replacement=True, generator=generator)
    samples = samples.to(log_p.device).long()
    group_rewards = (samples == 0).to(log_p.dtype)
    advantages = grpo_advantages(group_rewards, eps)
    policy_gradient = -(advantages * log_p.gather(1, samples)).mean()
    if kl == "exact":
        kl_term = (log_p.exp() * (log_p - log_ref)).sum(dim=1).mean()
    elif kl == "k3":
        d = log_ref.gather(1, samples) - log_p.gather(1, samples)
        kl_term = (d.exp() - d - 1).mean()
    else:
        raise ValueError(f"grpo: unknown KL estimator {kl!r} (known: exact, k3)")
    loss = policy_gradient + kl_coef * kl_term
    r_w, r_j = rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return loss, _diagnostics(r_w, r_j, kl=float(kl_term.detach()), sample_hit_rate=float(group_rewards.mean()),
                              p_chosen=float(log_p[:, 0].detach().exp().mean()))


def catalogue_rewards(hits: torch.Tensor, rank_penalty: bool = True) -> torch.Tensor:
    """Rewards of a beam's G items [B, G] (best first; `hits`: the item is the target): 1 for the
    target; with `rank_penalty`, MiniOneRec's ranking reward on the others, given only where the
    target is in the beam: -w_g / sum_h w_h, w_g = 1 / log2(g + 2) for beam position g (0-based),
    so the wrong items ranked highest are pushed down most (the penalties of a full row sum to -1
    over the G positions, the target's position's share left out)."""
    rewards = hits.float()
    if rank_penalty:
        weights = 1.0 / torch.log2(torch.arange(hits.shape[1], dtype=torch.float32) + 2)
        penalty = -(weights / weights.sum()).to(rewards.device)
        rewards = rewards + penalty * (~hits) * hits.any(dim=1, keepdim=True)
    return rewards


def grpo_catalogue(policy_tokens, reference_tokens, mask, rewards, kl_coef: float = 1e-3, eps: float = 1e-4):
    """GRPO over sampled answers (TRL's GRPO loss as ReRe and MiniOneRec train with it): per answer
    token t of group member g, -A_g * r_t + kl_coef * (exp(d_t) - d_t - 1), d_t = log pi_ref(y_t) -
    log pi_theta(y_t), r_t = pi_theta(y_t) / pi_theta_old(y_t) = 1 in value (one step per group) with
    gradient grad log pi_theta(y_t); averaged over each answer's tokens, then over the group and the
    batch. A = `grpo_advantages(rewards, eps)`. [B, G, T] log-probs and mask, [B, G] rewards."""
    advantages = grpo_advantages(rewards, eps)
    ratio = torch.exp(policy_tokens - policy_tokens.detach())
    d = reference_tokens - policy_tokens
    kl_tokens = torch.exp(d) - d - 1
    per_token = -ratio * advantages[..., None] + kl_coef * kl_tokens
    maskf = mask.to(per_token.dtype)
    per_answer = (per_token * maskf).sum(-1) / maskf.sum(-1).clamp(min=1)
    kl = ((kl_tokens * maskf).sum(-1) / maskf.sum(-1).clamp(min=1)).mean()
    hits = rewards > 0.5
    return per_answer.mean(), {"kl": float(kl.detach()),
                               "beam_hit_rate": float(hits.any(dim=1).float().mean()),
                               "reward": float(rewards.mean()),
                               "target_rank": float(hits.float().argmax(dim=1)[hits.any(dim=1)].float().mean())
                               if hits.any() else float("nan")}


OBJECTIVES = {"dpo": dpo, "dmpo": dmpo, "sdpo": sdpo, "dynamicpo": dynamicpo, "lpo4rec": lpo4rec,
              "lpo4rec_authors": lpo4rec_authors, "napo": napo, "grpo": grpo,
              "grpo_catalogue": grpo_catalogue}  # the last on sampled answers' tokens (rere)


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
