import copy

import pytest
from transformers import AutoTokenizer

from workflow.llm import prompts


@pytest.fixture(scope="module")
def tok(smollm_tokenizer_dir):
    return AutoTokenizer.from_pretrained(smollm_tokenizer_dir)


@pytest.fixture(scope="module")
def plain_tok(smollm_tokenizer_dir):
    t = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
    t.chat_template = None
    return t


def test_candidate_prompt_exact_text():
    text = prompts.candidate_prompt(["Heat (1995)", "Fargo (1996)"], ["Casino (1995)", "Up (2009)"], "movie")
    assert text == (
        "The user has watched these movies, oldest first:\n"
        "Heat (1995)\nFargo (1996)\n"
        "Which movie will the user watch next? Choose exactly one of these 2 movies:\n"
        "Casino (1995)\nUp (2009)\n"
        "Answer with the movie's title only."
    )


def test_open_prompt_exact_text():
    assert prompts.open_prompt(["Doom", "Quake"], "game") == (
        "The user has played these games, oldest first:\nDoom\nQuake\n"
        "Which game will the user play next? Answer with the game's title only."
    )


def test_domain_words_and_config():
    assert prompts.domain_words("artist")[2] == "listened to"
    assert prompts.domain_words("book")[:2] == ("book", "books")
    with pytest.raises(ValueError, match="domain"):
        prompts.domain_words(" ")
    config = {"datasets": {"ml": {"domain": "movie"}, "x": {}}}
    assert prompts.dataset_domain(config, "ml") == "movie"
    assert prompts.dataset_domain(config, "x") == "item"
    with pytest.raises(KeyError, match="datasets.nope"):
        prompts.dataset_domain(config, "nope")


def test_empty_history_or_candidates_rejected():
    with pytest.raises(ValueError, match="history"):
        prompts.open_prompt([], "movie")
    with pytest.raises(ValueError, match="candidate"):
        prompts.candidate_prompt(["a"], [], "movie")


def test_clip_title_budget_and_idempotence(tok):
    short = "Heat (1995)"
    assert prompts.clip_title(tok, short, 24) == short
    long = "Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb (1963)"
    clipped = prompts.clip_title(tok, long, 6)
    assert len(tok.encode(clipped, add_special_tokens=False)) <= 6
    assert long.startswith(clipped) and clipped
    assert prompts.clip_title(tok, clipped, 6) == clipped
    odd = prompts.clip_title(tok, "Amélie Ç'est la vie 東京物語 東京物語", 7)
    assert "\ufffd" not in odd and len(tok.encode(odd, add_special_tokens=False)) <= 7
    with pytest.raises(ValueError):
        prompts.clip_title(tok, short, 0)


def test_render_uses_chat_template(tok):
    ids = prompts.render(tok, "hello")
    text = tok.decode(ids)
    assert "<|im_start|>user\nhello<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_render_plain_text_without_template(plain_tok):
    assert prompts.render(plain_tok, "hello") == plain_tok.encode("hello\n", add_special_tokens=True)
    assert prompts.end_of_answer_id(plain_tok) == plain_tok.eos_token_id


def test_prompt_plus_answer_equals_template_conversation(tok):
    """The scored/trained tokens are exactly what the chat template makes of the full turn."""
    prompt, title = "Which movie?", "Casino (1995)"
    ours = prompts.render(tok, prompt) + prompts.answer_ids(tok, title)
    full = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": title}],
                                   tokenize=True)["input_ids"]
    assert full[: len(ours)] == ours
    assert ours[-1] == tok.convert_tokens_to_ids("<|im_end|>")


def test_clipped_answer_matches_clipped_prompt(tok):
    long = "Dr. Strangelove or: How I Learned to Stop Worrying and Love the Bomb (1963)"
    ids = prompts.candidate_prompt_ids(tok, ["Heat (1995)"], [long, "Up (2009)"], "movie", max_title_tokens=5)
    clipped = prompts.clip_title(tok, long, 5)
    assert f"\n{clipped}\n{prompts.clip_title(tok, 'Up (2009)', 5)}\n" in tok.decode(ids)
    assert "Up (2009)" not in tok.decode(ids)  # 8 tokens: clipped too
    assert tok.decode(prompts.clipped_answer_ids(tok, long, 5)) == clipped + "<|im_end|>"


def test_prompt_ids_drop_oldest_history_to_fit(tok):
    history = [f"Old Movie Number {i} (19{i:02d})" for i in range(30)]
    full = prompts.open_prompt_ids(tok, history, "movie", max_prompt_tokens=10_000)
    fitted = prompts.open_prompt_ids(tok, history, "movie", max_prompt_tokens=len(full) - 5)
    text = tok.decode(fitted)
    assert len(fitted) <= len(full) - 5
    assert "Number 0 (" not in text and "Number 29 (" in text
    with pytest.raises(ValueError, match="max_prompt_tokens=20"):
        prompts.candidate_prompt_ids(tok, history, ["A", "B"], "movie", max_prompt_tokens=20)


def test_pure_functions_do_not_mutate_inputs(tok):
    history, cands = ["A (1990)", "B (1991)"], ["C", "D"]
    before = copy.deepcopy((history, cands))
    prompts.candidate_prompt_ids(tok, history, cands, "movie", max_title_tokens=2)
    assert (history, cands) == before


def test_the_builders_default_budgets_are_the_schemas():
    from workflow.config import read_schema

    llm = read_schema()["properties"]["llm"]["properties"]
    assert prompts.MAX_TITLE_TOKENS == llm["max_title_tokens"]["default"]
    assert prompts.MAX_PROMPT_TOKENS == llm["max_prompt_tokens"]["default"]
