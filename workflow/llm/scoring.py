"""log pi(y|x) of candidate answers with the prompt encoded once per sample.

Layout (written by hand: no library packs several continuations of one prefix into one row).
Per sample b, one packed row::

    [prompt x (P tokens)] [cand 1: y1_1 .. y1_{L1-1}] [cand 2: y2_1 .. y2_{L2-1}] ... [pad]

- Attention: a 4D block mask; prompt tokens attend causally to the prompt, candidate tokens attend
  to the whole prompt and causally to their own candidate only; pads attend to the prompt and
  themselves (never read; keeps softmax rows non-empty).
- Positions: the prompt has 0..P-1; every candidate restarts at P, so each candidate sees exactly
  the positions it would see as its own prompt+answer sequence.
- A candidate's last answer token (usually end-of-turn) is never an input: it only is predicted.
  The first answer token of every candidate is predicted by the prompt's last position.
- The LM head runs only on the hidden states that predict answer tokens (gathered and de-duplicated
  first), then log-softmax: full-vocabulary logits are never built for the whole row.

So with P ~ 250 and 20 answers of ~10 tokens a row holds ~430 tokens instead of 20 x 260.

Batch dimension = samples, in the caller's order, one forward pass per call. That is the contract
plug-ins rely on:
- `inputs_embeds_fn(input_ids, embeds) -> embeds` sees the packed [B, T] ids and their [B, T, H]
  embeddings and may replace some (iLoRA's item placeholder tokens; placeholders appear in the
  prompt part, in prompt order, and never in pads, which hold the tokenizer's pad id).
- A per-sample adapter gate (iLoRA: one softmax gate per sample shared by all layers) is a
  [B, n_experts] tensor the caller installs on its gated LoRA layers (e.g. a context manager that
  sets and clears a module attribute) around the call; row b of every activation is sample b.
- Works with and without gradients, with plain and PEFT-wrapped models (LoRA layers are injected
  into the wrapped modules, so calling the inner decoder uses them).

SFT (C = 1): `answer_logprobs` gives (sum, n) per sample; the SFT loss is
`-(sum / n).mean()` (per-sample token mean) or `-sum.sum() / n.sum()` (token mean over the batch).
DEALRec's per-sample gradient norm: call it per sample and backprop each loss.
Generation (SOFT, generation protocol) uses `model.generate` on `prompts.render` ids.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from workflow.llm import compiling

EmbedsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Packed(NamedTuple):
    input_ids: torch.Tensor     # [B, T] packed rows, right-padded with pad_id
    position_ids: torch.Tensor  # [B, T] prompt 0..P-1, each candidate from P
    segment: torch.Tensor       # [B, T] 0 = prompt, c + 1 = candidate c, -1 = pad
    pred_index: torch.Tensor    # [B, C, L] row position whose output predicts answer token t
    targets: torch.Tensor       # [B, C, L] answer token ids (0 where masked)
    mask: torch.Tensor          # [B, C, L] True for real answer tokens


def _check(prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[Sequence[int]]]) -> int:
    if len(prompt_ids) != len(answer_ids) or not prompt_ids:
        raise ValueError(f"{len(prompt_ids)} prompts but {len(answer_ids)} candidate lists (need equal, > 0)")
    n_cands = {len(a) for a in answer_ids}
    if len(n_cands) != 1 or 0 in n_cands:
        raise ValueError(f"every sample needs the same number (> 0) of candidates, got {sorted(n_cands)}")
    for b, (p, answers) in enumerate(zip(prompt_ids, answer_ids)):
        if not p:
            raise ValueError(f"sample {b}: empty prompt")
        if any(not a for a in answers):
            raise ValueError(f"sample {b}: empty answer")
    return n_cands.pop()


def pack(prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[Sequence[int]]],
         pad_id: int = 0, multiple: int = 1) -> Packed:
    """The packed layout of the module docstring, as CPU tensors; rows padded to a multiple of
    `multiple` tokens (a compiled decoder's length buckets, workflow.llm.compiling)."""
    n_cands = _check(prompt_ids, answer_ids)
    max_answer = max(len(a) for answers in answer_ids for a in answers)
    B = len(prompt_ids)
    rows, positions, segments = [], [], []
    pred_index = torch.zeros(B, n_cands, max_answer, dtype=torch.long)
    targets = torch.zeros(B, n_cands, max_answer, dtype=torch.long)
    mask = torch.zeros(B, n_cands, max_answer, dtype=torch.bool)
    for b, (prompt, answers) in enumerate(zip(prompt_ids, answer_ids)):
        P = len(prompt)
        ids, pos, seg = list(prompt), list(range(P)), [0] * P
        for c, answer in enumerate(answers):
            start, L = len(ids), len(answer)
            ids += answer[:-1]
            pos += range(P, P + L - 1)
            seg += [c + 1] * (L - 1)
            pred_index[b, c, :L] = torch.tensor([P - 1] + list(range(start, start + L - 1)))
            targets[b, c, :L] = torch.tensor(answer)
            mask[b, c, :L] = True
        rows.append(ids), positions.append(pos), segments.append(seg)
    T = -(-max(len(r) for r in rows) // multiple) * multiple

    def padded(seqs, value):
        return torch.tensor([s + [value] * (T - len(s)) for s in seqs], dtype=torch.long)

    return Packed(padded(rows, pad_id), padded(positions, 0), padded(segments, -1), pred_index, targets, mask)


def block_mask(segment: torch.Tensor, attn_implementation: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B, 1, T, T] mask from segment ids: causal, and key is prompt or the query's own segment.

    sdpa takes it as bool (True = attend); eager adds it to the scores, so it gets 0 / dtype-min.
    """
    T = segment.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment.device).tril()
    query, key = segment[:, :, None], segment[:, None, :]
    return attention_mask((causal & ((key == query) | (key == 0)))[:, None], attn_implementation, dtype)


def attention_mask(allowed: torch.Tensor, attn_implementation: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A [B, 1, Q, K] bool mask (True = attend) as the decoder takes it: bool for sdpa, additive
    (0 / dtype-min) for eager."""
    if attn_implementation == "sdpa":
        return allowed
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)
    raise ValueError(f"attention implementation {attn_implementation!r} does not take a custom 4D mask; "
                     "load the model with attn_implementation='sdpa' or 'eager'")


def _parts(model):
    """(decoder, lm_head, config) of a causal LM, unwrapping PEFT (its LoRA layers stay in place)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = inner.config
    for key in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, key, None):
            raise ValueError(f"{type(inner).__name__} post-processes logits ({key}); scoring applies lm_head only")
    return inner.get_decoder(), inner.get_output_embeddings(), config


def _pad_id(config) -> int:
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    if isinstance(pad, (list, tuple)):
        pad = pad[0]
    return int(pad or 0)


def token_logprobs(model, prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[Sequence[int]]], *,
                   inputs_embeds_fn: EmbedsFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log pi(y_t | x, y_<t) of every candidate answer.

    prompt_ids: B prompts (token ids). answer_ids: per sample, C candidate answers (token ids, may
    differ in length; C equal across samples). Returns (logprobs [B, C, L] float32, 0 at padding;
    mask [B, C, L] bool), L the longest answer. Differentiable w.r.t. the model's parameters.
    """
    decoder, lm_head, config = _parts(model)
    device = lm_head.weight.device
    forward = compiling.forward_of(decoder)  # `llm.compile`: the compiled decoder, lengths bucketed
    packed = pack(prompt_ids, answer_ids, _pad_id(config), compiling.BUCKET if forward is not decoder else 1)
    input_ids = packed.input_ids.to(device)
    embeds = decoder.get_input_embeddings()(input_ids)
    if inputs_embeds_fn is not None:
        embeds = inputs_embeds_fn(input_ids, embeds)
    attention = block_mask(packed.segment.to(device), config._attn_implementation, embeds.dtype)
    hidden = forward(inputs_embeds=embeds, attention_mask=attention,
                     position_ids=packed.position_ids.to(device), use_cache=False).last_hidden_state

    return _answer_logprobs(hidden, packed, lm_head)


def _answer_logprobs(hidden: torch.Tensor, packed: Packed, lm_head) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [B, C, L] (0 at padding) and mask from the packed rows' hidden states:
    the LM head runs only on the rows that predict an answer token, each row once."""
    device = hidden.device
    B, T = hidden.shape[:2]
    mask = packed.mask.to(device)
    flat_index = (packed.pred_index.to(device) + torch.arange(B, device=device)[:, None, None] * T)[mask]
    rows, row_of_token = torch.unique(flat_index, return_inverse=True)  # shared prompt-end row once
    logits = lm_head(hidden.reshape(B * T, -1)[rows]).float()
    token_lp = logits[row_of_token, packed.targets.to(device)[mask]] - torch.logsumexp(logits, dim=-1)[row_of_token]
    out = torch.zeros(mask.shape, dtype=token_lp.dtype, device=device).masked_scatter(mask, token_lp)
    return out, mask


def candidate_logprobs(model, prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[Sequence[int]]], *,
                       inputs_embeds_fn: EmbedsFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(y|x) summed over answer tokens [B, C] float32, answer token counts [B, C] long).

    The prompt is encoded once per sample and shared by its C candidates (see the module
    docstring). Length-normalised score: sum / n.
    """
    token_lp, mask = token_logprobs(model, prompt_ids, answer_ids, inputs_embeds_fn=inputs_embeds_fn)
    return token_lp.sum(-1), mask.sum(-1)


def answer_logprobs(model, prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[int]], *,
                    inputs_embeds_fn: EmbedsFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Single answer per sample (SFT): (log pi(y|x) [B], token counts [B]).

    SFT loss on answer tokens only: `-(logp.sum() / n.sum())` (token mean) or `-(logp / n).mean()`.
    """
    logp, n = candidate_logprobs(model, prompt_ids, [[a] for a in answer_ids], inputs_embeds_fn=inputs_embeds_fn)
    return logp[:, 0], n[:, 0]


def concat_candidate_logprobs(model, prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[Sequence[int]]],
                              *, padding_side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Reference path: every candidate as its own prompt+answer sequence, all B*C in one batch.

    This is how TRL's DPO trainer and the papers' code score answers; kept as the correctness
    oracle for tests and the baseline of bench/bench_scoring.py. With left padding the LM head runs
    only on the last L+1 positions (`logits_to_keep`), so the baseline is not slowed by the head.
    Returns the same (sum [B, C], n [B, C]) as `candidate_logprobs`.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    n_cands = _check(prompt_ids, answer_ids)
    _, lm_head, config = _parts(model)
    device, pad = lm_head.weight.device, _pad_id(config)
    seqs = [list(p) + list(a) for p, answers in zip(prompt_ids, answer_ids) for a in answers]
    answer_len = torch.tensor([len(a) for answers in answer_ids for a in answers], device=device)
    T, L = max(len(s) for s in seqs), int(answer_len.max())
    left = padding_side == "left"

    def padded(seq, fill):
        gap = [fill] * (T - len(seq))
        return gap + seq if left else seq + gap

    ids = torch.tensor([padded(s, pad) for s in seqs], device=device)
    attention = torch.tensor([padded([1] * len(s), 0) for s in seqs], device=device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attention, position_ids=positions,
                   logits_to_keep=L + 1 if left else 0, use_cache=False).logits.float()
    logp = F.log_softmax(logits[:, :-1], dim=-1)  # [N, T', V] predicting tokens 1..
    if left:
        targets, t = ids[:, T - L:], torch.arange(L, device=device)
        mask = t[None, :] >= (L - answer_len)[:, None]
    else:
        seq_len = attention.sum(-1)
        targets, t = ids[:, 1:], torch.arange(1, T, device=device)
        mask = (t[None, :] >= (seq_len - answer_len)[:, None]) & (t[None, :] < seq_len[:, None])
    token_lp = logp.gather(-1, targets[..., None])[..., 0] * mask
    B = len(prompt_ids)
    return token_lp.sum(-1).view(B, n_cands), answer_len.view(B, n_cands)


# ---------------------------------------------------------------------------------------------
# Evaluation without gradients: one prompt encoding shared by candidate scoring AND generation.
#
# The prompts of a batch, left-padded and without their last token, go through the model once
# (`encode_prompts`); their KV cache then (a) serves candidate scoring: per sample one row after the
# cache, [last prompt token][cand 1 minus its last token][cand 2 ...] with the block mask, the cache
# cropped back afterwards; and (b) is handed to `model.generate`, which then only feeds the last
# prompt token (transformers' prefix-cache reuse).
# The generation protocol thus no longer re-encodes the prompt the likelihood protocol encoded.
# Training keeps the packed path above: it needs gradients through the prompt for every candidate.

def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask, position_ids for left-padded sequences (the last token at -1,
    positions counted from each sequence's own first token so padding does not shift them)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq):] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids, mask, positions


class PromptCache(NamedTuple):
    past: object                 # transformers Cache of the prompts without their last token
    input_ids: torch.Tensor      # [B, P] left-padded full prompts (what `generate` is given)
    attention_mask: torch.Tensor  # [B, P] 1 for real tokens
    lengths: torch.Tensor        # [B] real prompt lengths


@torch.no_grad()
def encode_prompts(model, prompt_ids: Sequence[Sequence[int]], pad_id: int | None = None, *,
                   inputs_embeds_fn: EmbedsFn | None = None) -> PromptCache:
    """Run the left-padded prompts minus their last token through the model once, keeping the cache.
    `inputs_embeds_fn` as in `token_logprobs` (it sees the [B, P-1] left-padded ids); a prompt's last
    token, which generation feeds again, must not be one it replaces."""
    if not prompt_ids or any(len(p) < 2 for p in prompt_ids):
        raise ValueError("every prompt needs at least 2 tokens (the cache holds all but the last)")
    decoder, lm_head, config = _parts(model)
    device = lm_head.weight.device
    pad = _pad_id(config) if pad_id is None else pad_id
    ids, attention, positions = (t.to(device) for t in left_pad(prompt_ids, pad))
    inputs = {"input_ids": ids[:, :-1]}
    if inputs_embeds_fn is not None:
        inputs = {"inputs_embeds": inputs_embeds_fn(ids[:, :-1], decoder.get_input_embeddings()(ids[:, :-1]))}
    out = decoder(**inputs, attention_mask=attention[:, :-1], position_ids=positions[:, :-1], use_cache=True)
    return PromptCache(out.past_key_values, ids, attention, attention.sum(-1))


@torch.no_grad()
def cached_token_logprobs(model, cache: PromptCache, answer_ids: Sequence[Sequence[Sequence[int]]]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log pi(y_t | x, y_<t) [B, C, L] and mask [B, C, L], as `token_logprobs`, from a
    prompt cache. The candidates of a sample share one row after the cached prompt, in the packed
    layout of the module docstring ([last prompt token][cand 1 minus its last token][cand 2 ...]),
    so the cache is never copied per candidate; it is cropped back afterwards for generation."""
    if len(answer_ids) != cache.input_ids.shape[0]:
        raise ValueError(f"{len(answer_ids)} candidate lists for {cache.input_ids.shape[0]} cached prompts")
    decoder, lm_head, config = _parts(model)
    device = lm_head.weight.device
    last = cache.input_ids[:, -1:].tolist()
    packed = pack(last, answer_ids, _pad_id(config))  # "prompt" = the last prompt token only
    cached = cache.past.get_seq_length()
    # segments over [cached prompt | packed row]: cached real tokens are prompt (0), left pads -1
    prompt_segment = torch.where(cache.attention_mask[:, :-1].cpu() > 0, 0, -1)
    segment = torch.cat([prompt_segment, packed.segment], dim=1).to(device)
    attention = block_mask(segment, config._attn_implementation, decoder.get_input_embeddings().weight.dtype)
    attention = attention[:, :, cached:, :]
    positions = packed.position_ids.to(device) + (cache.lengths - 1)[:, None]
    try:
        hidden = decoder(input_ids=packed.input_ids.to(device), attention_mask=attention, position_ids=positions,
                         past_key_values=cache.past, use_cache=True).last_hidden_state
    finally:
        # the packed row's keys and values are not part of the prompt (transformers 5: a negative
        # count removes that many tokens)
        cache.past.crop(cached - cache.past.get_seq_length())
    return _answer_logprobs(hidden, packed, lm_head)


def cached_candidate_logprobs(model, cache: PromptCache, answer_ids: Sequence[Sequence[Sequence[int]]]
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum [B, C], token counts [B, C]) as `candidate_logprobs`, from a prompt cache."""
    token_lp, mask = cached_token_logprobs(model, cache, answer_ids)
    return token_lp.sum(-1), mask.sum(-1)
