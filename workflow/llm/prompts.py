"""Prompt builders: pure functions of titles, a domain word and a tokenizer.

Exact templates ({noun}, {nouns}, {did}, {do} come from the domain, see DOMAINS; titles one per
line, history oldest first):

candidate prompt (LLaRA style)::

    The user has {did} these {nouns}, oldest first:
    {history title 1}
    ...
    Which {noun} will the user {do} next? Choose exactly one of these {n} {nouns}:
    {candidate title 1}
    ...
    Answer with the {noun}'s title only.

open prompt (BIGRec style)::

    The user has {did} these {nouns}, oldest first:
    {history title 1}
    ...
    Which {noun} will the user {do} next? Answer with the {noun}'s title only.

sid prompt (TIGER / LC-Rec / MiniOneRec): the open prompt over semantic IDs. Every item is shown
and answered by its ID (`<a_12><b_3><c_40>`: tokens added to the vocabulary, workflow/semantic_ids.py)
where the open prompt shows titles, and the question ends "Answer with the {noun}'s ID only."

`render` sends the text as one user message through the model's chat template with the
generation prompt appended (SmolLM2's template adds its default system message), or, for a model
without a chat template, as plain text followed by a newline. The answer is the bare title followed
by the end-of-turn token (`answer_ids`), so likelihoods compare complete answers and an SFT model
learns to stop.

Title budget: every title is cut to `max_title_tokens` tokens by `clip_title` before it appears
anywhere (history, candidate list, answer), so the three always agree.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

from workflow.runs import ID_PROMPTS
from workflow.semantic_ids import sid_items

# The builders' defaults for a caller without the llm block; a run's come from config/schema.yaml's
# llm.max_title_tokens and llm.max_prompt_tokens (these equal them).
MAX_TITLE_TOKENS = 24
MAX_PROMPT_TOKENS = 512

# domain -> (noun, plural, past tense phrase, present tense phrase)
DOMAINS: dict[str, tuple[str, str, str, str]] = {
    "movie": ("movie", "movies", "watched", "watch"),
    "game": ("game", "games", "played", "play"),
    "product": ("product", "products", "bought", "buy"),
    "artist": ("artist", "artists", "listened to", "listen to"),
    "item": ("item", "items", "interacted with", "interact with"),
}


def domain_words(domain: str) -> tuple[str, str, str, str]:
    """(noun, plural, did, do) for a domain; an unknown word w gives (w, w+'s', 'interacted with', ...)."""
    if domain in DOMAINS:
        return DOMAINS[domain]
    if not domain or not domain.strip():
        raise ValueError("domain word is empty (config key datasets.<name>.domain)")
    return (domain, domain + "s", "interacted with", "interact with")


def dataset_domain(config: Mapping[str, Any], dataset: str) -> str:
    """The domain word of a dataset: config key `datasets.<name>.domain`, default `item`."""
    try:
        entry = config["datasets"][dataset]
    except KeyError:
        raise KeyError(f"config key 'datasets.{dataset}' does not exist") from None
    return entry.get("domain") or "item"


def _history_block(history_titles: Sequence[str], domain: str) -> str:
    if not history_titles:
        raise ValueError("a prompt needs at least one history title")
    noun, nouns, did, do = domain_words(domain)
    return f"The user has {did} these {nouns}, oldest first:\n" + "\n".join(history_titles) + "\n"


def candidate_prompt(history_titles: Sequence[str], candidate_titles: Sequence[str], domain: str = "item") -> str:
    """LLaRA-style prompt text: history, then the candidate titles; ask which one comes next."""
    if not candidate_titles:
        raise ValueError("a candidate prompt needs at least one candidate title")
    noun, nouns, did, do = domain_words(domain)
    return (
        _history_block(history_titles, domain)
        + f"Which {noun} will the user {do} next? Choose exactly one of these {len(candidate_titles)} {nouns}:\n"
        + "\n".join(candidate_titles)
        + f"\nAnswer with the {noun}'s title only."
    )


def open_prompt(history_titles: Sequence[str], domain: str = "item", answer_word: str = "title") -> str:
    """BIGRec-style prompt text: history; ask for the next item by title (the sid prompt: by ID)."""
    noun, nouns, did, do = domain_words(domain)
    question = f"Which {noun} will the user {do} next? Answer with the {noun}'s {answer_word} only."
    return _history_block(history_titles, domain) + question


def clip_title(tokenizer, title: str, max_title_tokens: int) -> str:
    """`title` cut to at most `max_title_tokens` tokens (unchanged when it fits).

    Idempotent: the result re-encodes to <= max_title_tokens tokens, so clipping twice changes
    nothing. A byte-level cut inside a multi-byte character leaves U+FFFD, which is dropped.
    """
    if max_title_tokens < 1:
        raise ValueError(f"max_title_tokens must be >= 1, got {max_title_tokens}")
    ids = tokenizer.encode(title, add_special_tokens=False)
    keep = max_title_tokens
    while len(ids) > max_title_tokens:
        title = tokenizer.decode(ids[:keep]).replace("\ufffd", "").strip()
        ids = tokenizer.encode(title, add_special_tokens=False)
        keep -= 1  # decode/encode can merge differently; cut one more token until it fits
    return title


def render(tokenizer, prompt: str) -> list[int]:
    """Token ids of the prompt as the model sees it, ready for the answer to follow.

    With a chat template: one user message, `add_generation_prompt=True`. Without: BOS (if the
    tokenizer adds one) + the text + a newline.
    """
    if getattr(tokenizer, "chat_template", None):
        return _template_ids(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
    return list(tokenizer.encode(prompt + "\n", add_special_tokens=True))


def _template_ids(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    return list(out["input_ids"] if isinstance(out, Mapping) else out)  # transformers 5 returns a BatchEncoding


@functools.lru_cache(maxsize=8)
def end_of_answer_id(tokenizer) -> int:
    """The token that ends an assistant turn: found by rendering a turn through the chat template
    (e.g. <|im_end|> for SmolLM2, <|eot_id|> for Llama 3); EOS without a template."""
    if getattr(tokenizer, "chat_template", None):
        probe, user = "zq", [{"role": "user", "content": "x"}]
        ids = _template_ids(tokenizer, user + [{"role": "assistant", "content": probe}], False)
        head = _template_ids(tokenizer, user, True)
        probe_ids = tokenizer.encode(probe, add_special_tokens=False)
        if ids[: len(head)] == head and ids[len(head): len(head) + len(probe_ids)] == probe_ids \
                and len(ids) > len(head) + len(probe_ids):
            return ids[len(head) + len(probe_ids)]
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither a chat template nor an EOS token to end answers with")
    return tokenizer.eos_token_id


def answer_ids(tokenizer, title: str) -> list[int]:
    """Answer tokens: the title (no special tokens) followed by the end-of-turn token."""
    ids = tokenizer.encode(title, add_special_tokens=False)
    if not ids:
        raise ValueError("empty answer title")
    return list(ids) + [end_of_answer_id(tokenizer)]


def _fit(tokenizer, history: list[str], build, max_prompt_tokens: int) -> list[int]:
    # Drop the oldest history titles until the rendered prompt fits the token budget.
    for start in range(len(history)):
        ids = render(tokenizer, build(history[start:]))
        if len(ids) <= max_prompt_tokens:
            return ids
    raise ValueError(f"prompt of {len(ids)} tokens exceeds llm.max_prompt_tokens={max_prompt_tokens} "
                     "even with a single history title")


def _listed(tokenizer, titles: Sequence[str], max_title_tokens: int, item_marker: str | None) -> list[str]:
    # a title as the prompt lists it: clipped, then the hybrid prompt's item placeholder (LLaRA)
    clipped = [clip_title(tokenizer, t, max_title_tokens) for t in titles]
    return [f"{t} {item_marker}" for t in clipped] if item_marker else clipped


def candidate_prompt_ids(tokenizer, history_titles: Sequence[str], candidate_titles: Sequence[str],
                         domain: str = "item", *, max_title_tokens: int = MAX_TITLE_TOKENS,
                         max_prompt_tokens: int = MAX_PROMPT_TOKENS, item_marker: str | None = None) -> list[int]:
    """Rendered candidate prompt with titles clipped and the oldest history dropped to fit;
    `item_marker` (the hybrid prompt's placeholder token) follows every listed title."""
    history = _listed(tokenizer, history_titles, max_title_tokens, item_marker)
    candidates = _listed(tokenizer, candidate_titles, max_title_tokens, item_marker)
    return _fit(tokenizer, history, lambda h: candidate_prompt(h, candidates, domain), max_prompt_tokens)


def open_prompt_ids(tokenizer, history_titles: Sequence[str], domain: str = "item", *,
                    max_title_tokens: int = MAX_TITLE_TOKENS, max_prompt_tokens: int = MAX_PROMPT_TOKENS,
                    item_marker: str | None = None) -> list[int]:
    """Rendered open prompt with titles clipped and the oldest history dropped to fit;
    `item_marker` follows every history title."""
    history = _listed(tokenizer, history_titles, max_title_tokens, item_marker)
    return _fit(tokenizer, history, lambda h: open_prompt(h, domain), max_prompt_tokens)


def sid_prompt_ids(tokenizer, history_ids: Sequence[str], domain: str = "item", *,
                   max_prompt_tokens: int = MAX_PROMPT_TOKENS) -> list[int]:
    """Rendered sid prompt: the history's semantic IDs, the oldest dropped to fit."""
    return _fit(tokenizer, list(history_ids), lambda h: open_prompt(h, domain, answer_word="ID"), max_prompt_tokens)


def alignment_prompts(sid: str, title: str, domain: str = "item") -> list[tuple[str, str]]:
    """LC-Rec's / MiniOneRec's ID <-> title alignment tasks of one item: (prompt text, answer) for
    ID -> title and for title -> ID."""
    noun = domain_words(domain)[0]
    return [(f"Which {noun} has the ID {sid}? Answer with the {noun}'s title only.", title),
            (f'What is the ID of the {noun} "{title}"? Answer with the {noun}\'s ID only.', sid)]


def clipped_answer_ids(tokenizer, title: str, max_title_tokens: int = MAX_TITLE_TOKENS) -> list[int]:
    """`answer_ids` of the title clipped exactly as the prompt builders clip it."""
    return answer_ids(tokenizer, clip_title(tokenizer, title, max_title_tokens))


def prompt_inputs(samples, items, tokenizer, domain: str, llm: dict,
                  item_marker: str | None = None) -> dict[str, list]:
    """Token ids of the candidate and open prompts (with `item_marker` after every listed title:
    the hybrid prompt), of the ID prompts (sid, cid) when the items are shown by code ID, and of every
    candidate's answer, and the candidate and history titles as the prompt shows them (clipped)."""
    titles = dict(zip(items["item_id"].astype(str), items["title"].astype(str)))
    budget = dict(max_title_tokens=llm["max_title_tokens"], max_prompt_tokens=llm["max_prompt_tokens"],
                  item_marker=item_marker)
    needed = {i for seq in samples["candidates"] for i in seq} | {i for seq in samples["history"] for i in seq}
    unknown = sorted(needed - titles.keys())
    if unknown:
        raise ValueError(f"{len(unknown)} item ids of the samples are not in the items table, e.g. {unknown[:3]}")
    clipped = {i: clip_title(tokenizer, titles[i], llm["max_title_tokens"]) for i in sorted(needed)}
    answer = {}
    sid = sid_items(items)
    out = {"candidate_prompt": [], "open_prompt": [], "answers": [], "shown_titles": [], "shown_history": []}
    id_prompt = []
    for history, candidates in zip(samples["history"], samples["candidates"]):
        history_titles = [titles[i] for i in history]
        candidate_titles = [titles[i] for i in candidates]
        out["candidate_prompt"].append(candidate_prompt_ids(tokenizer, history_titles, candidate_titles,
                                                                    domain, **budget))
        out["open_prompt"].append(open_prompt_ids(tokenizer, history_titles, domain, **budget))
        if sid:
            id_prompt.append(sid_prompt_ids(tokenizer, history_titles, domain,
                                            max_prompt_tokens=llm["max_prompt_tokens"]))
        for i in candidates:
            if i not in answer:
                answer[i] = answer_ids(tokenizer, clipped[i])
        out["answers"].append([answer[i] for i in candidates])
        out["shown_titles"].append([clipped[i] for i in candidates])
        out["shown_history"].append([clipped[i] for i in history])
    if sid:  # one rendering for every ID prompt: they differ in the items table (the IDs), not the prompt
        out.update({f"{prompt}_prompt": id_prompt for prompt in ID_PROMPTS})
    return out
