"""Whole-catalogue constrained beam search (workflow/llm/catalogue.py) on a tiny Llama: a beam as
wide as the catalogue is the exhaustive ranking of every item's log-prob (from the independent
per-candidate forward of the packed scorer); narrower beams return only valid, distinct items."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from workflow import metrics
from workflow.llm import catalogue

END = 7  # the end-of-answer token of these synthetic answers


def _catalogue(gen, n_items=40):
    """Answers sharing prefixes (a real catalogue's titles do: "Star Wars", "Star Trek ..."), one
    duplicate answer (two items with one title), each ending with END."""
    answers = []
    for i in range(n_items):
        stem = [100 + i % 3, 200 + i % 5] if i % 2 else [300 + i % 4]
        tail = torch.randint(1000, 3000, (int(gen.integers(0, 4)),), generator=torch.Generator().manual_seed(i))
        answers.append(stem + tail.tolist() + [END])
    answers.append(list(answers[5]))  # a duplicate title
    return answers


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def case():
    gen = np.random.default_rng(0)
    answers = _catalogue(gen)
    prompts = [gen.integers(10, 5000, size=int(n)).tolist() for n in (9, 14, 5)]
    return prompts, answers


def exhaustive(model, prompts, answers):
    """log pi(answer | prompt) of every item, each prompt + answer as its own plain forward pass."""
    out = np.zeros((len(prompts), len(answers)))
    with torch.no_grad():
        for row, prompt in enumerate(prompts):
            for col, answer in enumerate(answers):
                ids = torch.tensor([prompt + answer])
                logp = torch.log_softmax(model(ids).logits[0, len(prompt) - 1:-1].double(), dim=-1)
                out[row, col] = float(logp[torch.arange(len(answer)), torch.tensor(answer)].sum())
    return out


def test_full_width_beam_is_the_exhaustive_ranking(model, case):
    prompts, answers = case
    trie = catalogue.catalogue_trie(answers)
    n = len(answers)
    ranked = catalogue.beam_search(model, prompts, trie, width=n, top=n, batch_size=2)
    expected = exhaustive(model, prompts, answers)
    for row, (found, scores) in enumerate(zip(ranked.items, ranked.scores)):
        assert sorted(found) == list(range(n)), "every item exactly once"
        np.testing.assert_allclose(scores, expected[row, found], rtol=0, atol=2e-4)
        order = sorted(range(n), key=lambda i: (-expected[row, i], i))
        # the same order up to float ties: compare the sorted score sequences
        np.testing.assert_allclose(scores, expected[row, order], rtol=0, atol=2e-4)
    # and the ranks agree with full_ranking_ranks on the exhaustive scores
    targets = np.array([3, 17, 40])
    ranks = catalogue.target_ranks(ranked.items, ranked.scores, targets, n)
    np.testing.assert_array_equal(ranks, metrics.full_ranking_ranks(expected, targets))


def test_history_items_are_excluded_but_not_the_target(model, case):
    prompts, answers = case
    trie = catalogue.catalogue_trie(answers)
    n = len(answers)
    exclude = [{0, 1, 2}, set(), {9}]
    ranked = catalogue.beam_search(model, prompts, trie, width=n, top=n, exclude=exclude)
    expected = exhaustive(model, prompts, answers)
    for row, found in enumerate(ranked.items):
        assert not exclude[row] & set(found)
        assert len(found) == n - len(exclude[row])
    history = [[0, 1, 2, 3], [], [9]]  # sample 0's target 3 is in its history: kept, as full_ranking does
    targets = np.array([3, 5, 9])
    exclude_ranked = [set(h) - {t} for h, t in zip(history, targets)]
    ranked = catalogue.beam_search(model, prompts, trie, width=n, top=n, exclude=exclude_ranked)
    np.testing.assert_array_equal(catalogue.target_ranks(ranked.items, ranked.scores, targets, n),
                                  metrics.full_ranking_ranks(expected, targets, exclude=history))


@pytest.mark.parametrize("width", [1, 3, 8])
def test_narrow_beams_return_valid_distinct_items_and_early_stop_is_exact(model, case, width):
    prompts, answers = case
    trie = catalogue.catalogue_trie(answers)
    n = len(answers)
    top = 5
    ranked = catalogue.beam_search(model, prompts, trie, width=width, top=top)
    expected = exhaustive(model, prompts, answers)
    for row, (found, scores) in enumerate(zip(ranked.items, ranked.scores)):
        assert len(found) == len(set(found)) <= top
        assert all(0 <= i < n for i in found)
        np.testing.assert_allclose(scores, expected[row, found], rtol=0, atol=2e-4)  # exact log-probs
        assert scores == sorted(scores, reverse=True)
    # a beam wide enough for the top 5 (but not the catalogue) stops early with the exhaustive top 5
    wide = catalogue.beam_search(model, prompts, trie, width=n, top=top)
    full = catalogue.beam_search(model, prompts, trie, width=n, top=n)
    for row in range(len(prompts)):
        np.testing.assert_allclose(wide.scores[row], full.scores[row][:top], atol=1e-6)
    assert wide.steps <= full.steps


def test_batching_and_bf16_autocast(model, case):
    prompts, answers = case
    trie = catalogue.catalogue_trie(answers)
    one = catalogue.beam_search(model, prompts, trie, width=6, top=6, batch_size=1)
    three = catalogue.beam_search(model, prompts, trie, width=6, top=6, batch_size=3)
    assert one.items == three.items
    np.testing.assert_allclose(np.array(one.scores), np.array(three.scores), atol=2e-4)
    bf16 = catalogue.beam_search(model, prompts, trie, width=6, top=6,
                                 autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert all(len(f) == 6 and len(set(f)) == 6 for f in bf16.items)


def test_bad_input(model):
    with pytest.raises(ValueError, match="empty answer"):
        catalogue.catalogue_trie([[1, END], []])
    with pytest.raises(ValueError, match="width"):
        catalogue.beam_search(model, [[1, 2, 3]], catalogue.catalogue_trie([[5, END]]), width=0, top=1)
