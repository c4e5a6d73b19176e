"""The inference engine of the evaluation (and of SOFT's beam search, the preference reference and
the explanations): prompts batched by length (left padding), each batch of prompts encoded ONCE into
a KV cache (`workflow.llm.scoring.encode_prompts`) that serves candidate scoring
(`scoring.cached_candidate_logprobs`), free greedy decoding and greedy decoding constrained to the
candidates' answer tokens (a prefix tree, `transformers`' prefix_allowed_tokens_fn).

- `encoded_passes`: every pass of one set of prompts from their shared encoding (`PassOutputs`);
  `prompt_passes`, `likelihood_scores`, `greedy_answers`: the same, narrower.
- `decode_from_cache`: greedy answers continuing cached prompts; the cache is cropped back after.
- `answer_trie`, `next_tokens`, `constrained_tokens_fn`: the constrained decoding's prefix tree.
- `batches`, `by_length`, `pad_id`, `generation_config`, `base_model_only`; `left_pad` and
  `encode_prompts` (the left-padding and prompt-cache helpers of workflow/llm/scoring.py) are
  re-exported so a caller takes the whole engine from here.

Rows of every output are in the order of the prompts given.
"""
from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from workflow.llm.scoring import cached_candidate_logprobs, encode_prompts, left_pad  # noqa: F401  (re-exported)

# rows of a batch -> (the scorer's inputs_embeds_fn or None, a context manager around the batch's passes)
SampleHooks = Callable[[Sequence[int]], "tuple[Callable | None, contextlib.AbstractContextManager]"]


# ---------------------------------------------------------------------------------------------
# constrained generation: only a candidate's answer tokens, as a prefix tree

def answer_trie(answers: Sequence[Sequence[int]]) -> dict:
    """Prefix tree of answer token sequences: nested {token id: subtree}; an answer ends in a leaf
    (its last token, the end of the answer, has no continuation)."""
    root: dict = {}
    for answer in answers:
        node = root
        for token in answer:
            node = node.setdefault(token, {})
    return root


def next_tokens(trie: dict, prefix: Sequence[int], fallback: int) -> list[int]:
    """The tokens that continue `prefix` inside the trie. After a complete answer (a leaf), or off
    the trie (a row `generate` has finished and pads), only `fallback`: the processor needs a
    non-empty list, and a finished row's token is replaced by padding anyway."""
    node = trie
    for token in prefix:
        node = node.get(token)
        if node is None:
            return [fallback]
    return list(node) or [fallback]


def constrained_tokens_fn(answers: Sequence[Sequence[Sequence[int]]], width: int, fallback: int):
    """`prefix_allowed_tokens_fn` for `generate` on a batch: row b may only write one of
    answers[b]; `width` is the padded prompt width (the generated part follows it)."""
    tries = [answer_trie(a) for a in answers]

    def allowed(row: int, ids: torch.Tensor) -> list[int]:
        return next_tokens(tries[row], ids[width:].tolist(), fallback)

    return allowed


# ---------------------------------------------------------------------------------------------
# model passes

def base_model_only(model) -> contextlib.AbstractContextManager:
    """Run the BASE model: a PEFT model's adapter is switched off inside the block."""
    from peft import PeftModel

    return model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()


def batches(order: Sequence[int], batch_size: int):
    for start in range(0, len(order), batch_size):
        yield list(order[start:start + batch_size])


def by_length(sequences: Sequence[Sequence[int]]) -> np.ndarray:
    """Indices sorted by sequence length (longest first): batches hold similar lengths, little padding."""
    return np.argsort([-len(s) for s in sequences], kind="stable")


def generation_config(tokenizer, max_new_tokens: int):
    """Greedy decoding that stops at the end of the answer (end-of-turn) or end of text."""
    from transformers import GenerationConfig

    from workflow.llm.prompts import end_of_answer_id

    stop = sorted({end_of_answer_id(tokenizer), tokenizer.eos_token_id} - {None})
    return GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_id(tokenizer),
                            eos_token_id=stop, use_cache=True)


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def no_sample_hooks(rows: Sequence[int]):
    return None, contextlib.nullcontext()


class PassOutputs(NamedTuple):
    logprob: np.ndarray | None     # [N, C] log pi(y|x) summed (float32)
    tokens: np.ndarray | None      # [N, C] answer token counts
    answers: list[str] | None      # free greedy answers
    constrained: list[str] | None  # greedy answers restricted to the allowed answers


def decode_from_cache(model, tokenizer, cache, config, allowed_tokens_fn=None) -> list[str]:
    """Greedy answers continuing the cached prompts (optionally restricted by
    `prefix_allowed_tokens_fn`). The cache is cropped back to the prompts afterwards, so another
    decoding of the same batch reuses it."""
    cached = cache.past.get_seq_length()
    try:  # generate feeds only the last prompt token: the rest is in the cache
        out = model.generate(input_ids=cache.input_ids, attention_mask=cache.attention_mask,
                             past_key_values=cache.past, generation_config=config,
                             prefix_allowed_tokens_fn=allowed_tokens_fn)
    finally:
        grown = cache.past.get_seq_length() - cached
        if grown > 0:
            cache.past.crop(-grown)  # transformers 5: a negative count removes that many tokens
    width = cache.input_ids.shape[1]
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]


@torch.no_grad()
def encoded_passes(model, tokenizer, prompt_ids, answer_ids=None, *, max_new_tokens: int = 0,
                   constrain_to=None, batch_size: int, autocast: Callable,
                   sample_hooks: SampleHooks | None = None) -> PassOutputs:
    """Each batch of prompts (similar lengths together) is encoded ONCE; its KV cache serves
    candidate scoring (when `answer_ids` is given), free greedy generation (when max_new_tokens > 0)
    and constrained greedy generation (when `constrain_to` is given: per prompt, the answer token
    sequences it may write, up to the longest of them).
    `sample_hooks(rows) -> (inputs_embeds_fn or None, context manager)` plugs a method's per-sample
    parts into a batch of those rows (LLaRA's item embeddings in the prompt, iLoRA's gate); the
    context holds for every pass of the batch. Rows of the outputs are in the order of `prompt_ids`.
    """
    from workflow.llm.prompts import end_of_answer_id

    n = len(prompt_ids)
    score, generate, constrain = answer_ids is not None, max_new_tokens > 0, constrain_to is not None
    logprob = np.zeros((n, len(answer_ids[0])), dtype=np.float32) if score else None
    tokens = np.zeros((n, len(answer_ids[0])), dtype=np.int64) if score else None
    answers = [""] * n if generate else None
    constrained = [""] * n if constrain else None
    config = generation_config(tokenizer, max_new_tokens) if generate else None
    hooks = sample_hooks or no_sample_hooks
    for chosen in batches(by_length(prompt_ids), batch_size):
        embeds_fn, context = hooks(chosen)
        with autocast(), context:
            cache = encode_prompts(model, [prompt_ids[i] for i in chosen], pad_id(tokenizer),
                                   inputs_embeds_fn=embeds_fn)
            if score:
                lp, nt = cached_candidate_logprobs(model, cache, [answer_ids[i] for i in chosen])
                logprob[chosen], tokens[chosen] = lp.float().cpu().numpy(), nt.cpu().numpy()
            if generate:
                for i, answer in zip(chosen, decode_from_cache(model, tokenizer, cache, config)):
                    answers[i] = answer
            if constrain:
                allowed = [constrain_to[i] for i in chosen]
                longest = max(len(a) for sample in allowed for a in sample)
                allowed_fn = constrained_tokens_fn(allowed, cache.input_ids.shape[1], end_of_answer_id(tokenizer))
                config_c = generation_config(tokenizer, longest)
                for i, answer in zip(chosen, decode_from_cache(model, tokenizer, cache, config_c, allowed_fn)):
                    constrained[i] = answer
    return PassOutputs(logprob, tokens, answers, constrained)


def prompt_passes(model, tokenizer, prompt_ids, answer_ids=None, *, max_new_tokens: int = 0, batch_size: int,
                  autocast: Callable, sample_hooks: SampleHooks | None = None
                  ) -> tuple[np.ndarray | None, np.ndarray | None, list[str] | None]:
    """(log pi(y|x) summed [N, C] float32 or None, answer tokens [N, C] or None, free greedy answers
    or None) of `encoded_passes`, without constrained decoding."""
    return encoded_passes(model, tokenizer, prompt_ids, answer_ids, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, autocast=autocast, sample_hooks=sample_hooks)[:3]


def likelihood_scores(model, tokenizer, prompt_ids, answer_ids, batch_size: int, autocast: Callable
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(log pi(y|x) summed [N, C] float32, answer tokens [N, C] int) for every sample's candidates."""
    logprob, tokens, _ = prompt_passes(model, tokenizer, prompt_ids, answer_ids, batch_size=batch_size,
                                       autocast=autocast)
    return logprob, tokens


def greedy_answers(model, tokenizer, prompt_ids, max_new_tokens: int, batch_size: int, autocast: Callable) -> list[str]:
    """Greedy decoding (KV cache) of every prompt, batched with left padding; the decoded answers."""
    return prompt_passes(model, tokenizer, prompt_ids, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         autocast=autocast)[2]
