"""The evaluation's additions beyond the papers (issue 15): constrained generation, the categories of
free answers, and position bias (the likelihood protocol with the candidates listed in reverse)."""
from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from workflow import metrics
from workflow.llm import evaluate, prompts
from workflow.runs import PROMPT_PROTOCOLS

LLM = {"device": "cpu", "dtype": "float32", "max_title_tokens": 24, "max_prompt_tokens": 512}
EVALUATION = {"max_new_tokens": 12, "batch_size": 2, "splits": ["test"]}
TITLES = {"alien": "Alien (1979)", "aliens": "Aliens (1986)", "matrix": "The Matrix (1999)",
          "reloaded": "The Matrix Reloaded (2003)", "heat": "Heat (1995)", "fargo": "Fargo (1996)",
          "up": "Up (2009)", "jaws": "Jaws (1975)", "casino": "Casino (1995)", "brazil": "Brazil (1985)"}
ITEMS = pd.DataFrame({"item_id": list(TITLES), "title": list(TITLES.values())})


def samples_of(rows: list[tuple[list[str], str, list[str]]]) -> pd.DataFrame:
    """Test samples from (history, target, candidates) item ids."""
    return pd.DataFrame([{"sample_id": f"s{k}", "split": "test", "user_id": f"u{k % 2}", "history": history,
                          "target": target, "candidates": candidates}
                         for k, (history, target, candidates) in enumerate(rows)])


# Alien / Aliens and The Matrix / The Matrix Reloaded share their first tokens (checked below).
SAMPLES = samples_of([
    (["up", "jaws"], "aliens", ["alien", "aliens", "matrix", "reloaded"]),
    (["heat", "fargo"], "matrix", ["reloaded", "matrix", "aliens", "alien"]),
    (["casino"], "heat", ["heat", "fargo", "alien", "brazil"]),
    (["brazil", "up"], "jaws", ["matrix", "jaws", "casino", "heat"]),
    (["alien"], "fargo", ["fargo", "up", "reloaded", "jaws"]),
])


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return evaluate.load_for_evaluation(tiny_model_dir, device="cpu", dtype="float32")


def run(model, tokenizer, protocols, samples=SAMPLES, **evaluation):
    return evaluate.evaluate(model, tokenizer, samples, ITEMS, protocols=protocols, domain="movie", llm=LLM,
                             evaluation={**EVALUATION, "protocols": protocols, **evaluation})


class ScriptedAnswers(LogitsProcessor):
    """A large bonus for token script[row][t] at decoding step t: greedy decoding writes the script
    wherever it is allowed to (after the prefix constraint, an excluded token stays excluded)."""

    def __init__(self, scripts: list[list[int]], width: int):
        self.scripts, self.width = scripts, width

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.width
        for row, script in enumerate(self.scripts):
            if step < len(script):
                scores[row, script[step]] += 1e4
        return scores


def script_answers(model, monkeypatch, scripts: dict[tuple, list[int]]):
    """Make `model.generate` follow a script per prompt (keyed by the prompt's token ids)."""
    generate = model.generate

    def scripted(*args, **kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        rows = [scripts[tuple(row[m.bool()].tolist())] for row, m in zip(ids, mask)]
        return generate(*args, logits_processor=LogitsProcessorList([ScriptedAnswers(rows, ids.shape[1])]), **kwargs)

    monkeypatch.setattr(model, "generate", scripted)


def prompt_key(tokenizer, samples: pd.DataFrame, row: int) -> tuple:
    inputs = evaluate.prompt_inputs(samples, ITEMS, tokenizer, "movie", LLM)
    return tuple(inputs["candidate_prompt"][row])


# --- constrained generation ------------------------------------------------------------------

def test_the_prefix_tree_allows_only_answer_continuations():
    end = 2
    trie = evaluate.answer_trie([[5, 6, end], [5, 7, 8, end], [5, 6, 9, end]])
    assert evaluate.next_tokens(trie, [], end) == [5]
    assert evaluate.next_tokens(trie, [5], end) == [6, 7]
    assert evaluate.next_tokens(trie, [5, 6], end) == [end, 9]  # "5 6" is an answer and a prefix of one
    assert evaluate.next_tokens(trie, [5, 7], end) == [8]
    assert evaluate.next_tokens(trie, [5, 6, end], end) == [end]  # complete: only the end again
    assert evaluate.next_tokens(trie, [4], end) == [end]  # off the tree (a finished, padded row)


def test_titles_sharing_a_prefix_share_their_first_tokens(tiny):
    _, tokenizer = tiny
    for a, b, shared in (("alien", "aliens", 1), ("matrix", "reloaded", 2)):
        ids_a, ids_b = (prompts.answer_ids(tokenizer, TITLES[k]) for k in (a, b))
        assert ids_a[:shared] == ids_b[:shared] and ids_a[shared] != ids_b[shared]


def test_every_constrained_answer_is_exactly_one_candidate_title(tiny):
    model, tokenizer = tiny
    # 3 new tokens are fewer than any title: constrained decoding still writes whole titles
    pred, values = run(model, tokenizer, ["generation_constrained"], max_new_tokens=3, generation_samples=4)
    decoded = pred["constrained_generated"].notna().to_numpy()
    assert decoded.sum() == 4
    for row in np.flatnonzero(decoded):
        shown = [TITLES[c] for c in SAMPLES["candidates"][row]]
        answer = pred["constrained_generated"][row]
        assert answer in shown and evaluate.matched_candidates(answer, shown) == [shown.index(answer)]
        assert pred["constrained_item"][row] == SAMPLES["candidates"][row][shown.index(answer)]
    chosen = values["generation_constrained"]
    np.testing.assert_array_equal(chosen["valid"][decoded], 1)
    np.testing.assert_array_equal(chosen["hit"][decoded], (pred["constrained_item"] == pred["target"])[decoded])
    assert np.isnan(chosen["valid"][~decoded]).all() and np.isnan(chosen["hit"][~decoded]).all()
    assert set(values) == {"generation_constrained"} and pred["generated"].isna().all()
    # one encoding serving scoring, free and constrained decoding gives the same constrained answers
    together, _ = run(model, tokenizer, ["likelihood", "generation", "generation_constrained"], max_new_tokens=3,
                      generation_samples=4)
    assert together["constrained_generated"].tolist() == pred["constrained_generated"].tolist()


def test_a_free_answer_that_is_a_candidate_title_is_also_the_constrained_answer(tiny, monkeypatch):
    model, tokenizer = tiny
    # free greedy decoding is scripted to write a candidate title (the target in sample 0)
    chosen = ["aliens", "reloaded", "fargo", "matrix", "jaws"]
    script_answers(model, monkeypatch, {prompt_key(tokenizer, SAMPLES, row): prompts.answer_ids(tokenizer, TITLES[c])
                                        for row, c in enumerate(chosen)})
    pred, values = run(model, tokenizer, ["generation", "generation_constrained"])
    assert pred["generated"].tolist() == [TITLES[c] for c in chosen]
    assert pred["constrained_generated"].tolist() == pred["generated"].tolist()
    assert pred["matched_item"].tolist() == pred["constrained_item"].tolist() == chosen
    for metric in ("valid", "hit"):
        np.testing.assert_array_equal(values["generation"][metric], values["generation_constrained"][metric])
    np.testing.assert_array_equal(values["generation"]["hit"], [1, 0, 0, 0, 0])


def test_constrained_decoding_completes_titles_that_share_a_prefix(tiny, monkeypatch):
    model, tokenizer = tiny
    end = prompts.end_of_answer_id(tokenizer)
    text = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    # sample 0 lists Alien (1979), Aliens (1986), The Matrix (1999), The Matrix Reloaded (2003)
    scripts = {"Alien": text("Alien") + [end],  # stops inside the tree: must go on to "Alien (1979)"
               "Aliens": text("Aliens") + [end],
               "The Matrix Reloaded": text("The Matrix Reloaded") + [end]}
    expected = {"Alien": "Alien (1979)", "Aliens": "Aliens (1986)", "The Matrix Reloaded": "The Matrix Reloaded (2003)"}
    sample = SAMPLES.iloc[:1].reset_index(drop=True)
    for free, script in scripts.items():
        with monkeypatch.context() as patch:
            script_answers(model, patch, {prompt_key(tokenizer, sample, 0): script})
            pred, values = run(model, tokenizer, ["generation", "generation_constrained"], samples=sample)
        assert pred["generated"][0] == free and pred["constrained_generated"][0] == expected[free]
        # the free answer names no complete candidate title; the constrained one names exactly one
        assert values["generation"]["valid"][0] == 0 and values["generation_constrained"]["valid"][0] == 1


# --- categories of free answers -----------------------------------------------------------------

CANDIDATES = ["Heat (1995)", "Fargo (1996)", "Aliens (1986)"]
HISTORY = ["Up (2009)", "Alien (1979)"]
OTHERS = ["Casino (1995)", "Jaws (1975)"]


@pytest.mark.parametrize("answer, category", [
    ("Heat (1995) or Fargo (1996)", "several"),
    ("Heat (1995), Fargo (1996) and Up (2009)", "several"),   # several beats history
    ("  heat   (1995) ", "valid"),
    ("Fargo (1996), as Up (2009) was", "valid"),               # one candidate beats history
    ("Aliens (1986)", "valid"),                                # not also history's "Alien (1979)"
    ("Up (2009)", "history"),
    ("Alien (1979) or Casino (1995)", "history"),              # history beats outside
    ("casino (1995)", "outside"),
    ("Brazil (1985)", "nothing"),                              # in no list given
    ("Heat", "nothing"),                                       # part of a title names nothing
    ("", "nothing"),
])
def test_answer_category(answer, category):
    assert evaluate.answer_category(answer, CANDIDATES, HISTORY, OTHERS) == category
    assert (category == "valid") == (evaluate.match_answer(answer, CANDIDATES) is not None)


def test_answer_error_rates_and_valid_ratio_sum_to_one(tiny, monkeypatch):
    model, tokenizer = tiny
    # sample: candidates / history -> the hand-made answer and its category
    answers = ["Alien (1979) or Aliens (1986)",   # s0: two candidates -> several
               "The Matrix (1999)",               # s1: the target -> valid, hit
               "Casino (1995)",                   # s2: its history -> history
               "Fargo (1996)",                    # s3: no candidate, no history -> outside
               "I do not know"]                   # s4: nothing
    monkeypatch.setattr(evaluate, "encoded_passes",
                        lambda *a, **k: evaluate.PassOutputs(None, None, answers, None))
    pred, values = run(model, tokenizer, ["generation"])
    expected = {"valid": [0, 1, 0, 0, 0], "hit": [0, 1, 0, 0, 0], "several": [1, 0, 0, 0, 0],
                "history": [0, 0, 1, 0, 0], "outside": [0, 0, 0, 1, 0], "nothing": [0, 0, 0, 0, 1]}
    assert list(values["generation"]) == list(expected)
    for metric, per_sample in expected.items():
        np.testing.assert_array_equal(values["generation"][metric], per_sample, err_msg=metric)
    rates = {m: np.mean(values["generation"][m]) for m in ("valid", *evaluate.ANSWER_ERRORS)}
    assert sum(rates.values()) == pytest.approx(1.0)
    assert pred["answer_category"].tolist() == ["several", "valid", "history", "outside", "nothing"]
    table = evaluate.metrics_table(SAMPLES, values, dataset="toy", method="base-candidate", selection="none")
    assert set(table.loc[table["protocol"] == "generation", "metric"]) == set(expected)


def test_answer_errors_cover_only_the_decoded_samples(tiny, monkeypatch):
    model, tokenizer = tiny
    monkeypatch.setattr(evaluate, "encoded_passes",
                        lambda *a, **k: evaluate.PassOutputs(None, None, ["Casino (1995)"] * 2, None))
    pred, values = run(model, tokenizer, ["generation"], generation_samples=2)
    decoded = pred["generated"].notna().to_numpy()
    assert decoded.sum() == 2
    per_sample = sum(values["generation"][m] for m in ("valid", *evaluate.ANSWER_ERRORS))
    np.testing.assert_array_equal(per_sample[decoded], 1)
    assert np.isnan(per_sample[~decoded]).all() and pred["answer_category"][~decoded].isna().all()


# --- position bias ----------------------------------------------------------------------------

def test_position_bias_values_by_hand():
    forward = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [1.0, 1.0, 0.0]])
    flipped = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 1.0, 0.0]])
    values = evaluate.position_bias_values(forward, flipped, np.array([0, 2, 1]))
    np.testing.assert_array_equal(values["top_changed"], [0, 1, 0])  # a tie goes to the first column both times
    np.testing.assert_array_equal(values["hr@1"], [1, 0, 0])  # row 2: the tie ranks the target pessimistically
    np.testing.assert_allclose(values["mrr"], [1, 1 / 3, 1 / 2])
    np.testing.assert_allclose(values["auc"], [1, 0, 0.75])
    assert set(values) == set(metrics.candidate_metrics(flipped, np.array([0, 2, 1]))) | {"top_changed"}


def test_top_changed_by_hand():
    forward = np.array([[0.5, 0.2], [np.nan, 1.0], [1.0, 1.0]])
    other = np.array([[0.1, 0.3], [2.0, 1.0], [1.0, 1.0]])
    # row 0: top 0 -> 1; row 1: NaN is the worst score (top 1 -> 0); row 2: a tie, first column both times
    np.testing.assert_array_equal(metrics.top_changed(forward, other), [1, 1, 0])
    with pytest.raises(ValueError, match="shapes"):
        metrics.top_changed(forward, other[:, :1])


def test_reversed_candidates_keep_the_candidates():
    flipped = evaluate.reversed_candidates(SAMPLES)
    assert flipped["candidates"][0] == ["reloaded", "matrix", "aliens", "alien"]
    assert SAMPLES["candidates"][0] == ["alien", "aliens", "matrix", "reloaded"]  # the input is left alone


@pytest.mark.parametrize("prompt, same", [("open", True), ("candidate", False)])
def test_reversed_order_scores(tiny, prompt, same):
    """The open prompt does not list the candidates: reversing them changes nothing; the candidate
    prompt lists them, so the scores move."""
    model, tokenizer = tiny
    inputs = evaluate.prompt_inputs(SAMPLES, ITEMS, tokenizer, "movie", LLM)
    forward, _ = evaluate.likelihood_scores(model, tokenizer, inputs[f"{prompt}_prompt"], inputs["answers"], 2,
                                            torch.no_grad)
    flipped = evaluate.reversed_order_logprobs(model, tokenizer, SAMPLES, ITEMS, prompt=prompt, domain="movie",
                                               llm=LLM, batch_size=2, autocast=torch.no_grad)
    assert flipped.shape == forward.shape
    if same:
        np.testing.assert_allclose(flipped, forward, atol=1e-5)
    else:
        assert np.abs(flipped - forward).max() > 1e-3


def test_likelihood_reversed_protocol(tiny):
    model, tokenizer = tiny
    pred, values = run(model, tokenizer, ["likelihood_reversed"])
    assert set(values) == {"likelihood", "likelihood_norm", "likelihood_reversed"}  # read against the forward order
    forward, flipped = np.stack(pred["candidate_logprob"]), np.stack(pred["candidate_logprob_reversed"])
    target = np.array([c.index(t) for c, t in zip(pred["candidates"], pred["target"])])
    np.testing.assert_array_equal(pred["target_rank_reversed"], metrics.target_ranks(flipped, target))
    changed = [float(np.argmax(f) != np.argmax(b)) for f, b in zip(forward, flipped)]
    np.testing.assert_array_equal(values["likelihood_reversed"]["top_changed"], changed)
    np.testing.assert_array_equal(values["likelihood_reversed"]["hr@1"], pred["target_rank_reversed"] == 0)
    assert "likelihood_reversed" in PROMPT_PROTOCOLS["candidate"]
    with pytest.raises(ValueError, match="likelihood_reversed"):
        evaluate.evaluate(model, tokenizer, SAMPLES, ITEMS, protocols=["likelihood_reversed"], domain="movie",
                          llm=LLM, evaluation=EVALUATION, prompt="open")


def test_hybrid_hooks_see_the_reversed_prompts(tiny):
    """A hybrid model's per-sample parts (workflow/llm/llara.py) follow the prompt they are built
    for: the reversed pass hands `hooks_for` the samples with reversed candidates and their prompts,
    and every pass of the evaluation runs under the hooks of its rows."""
    model, tokenizer = tiny
    seen, rows = [], []

    def hooks_for(frame, prompt_ids):
        seen.append((frame["candidates"].tolist(), prompt_ids))
        pass_index = len(seen) - 1

        def hooks(chosen):
            rows.append(pass_index)
            return None, contextlib.nullcontext()

        return hooks

    pred, values = evaluate.evaluate(model, tokenizer, SAMPLES, ITEMS, protocols=list(PROMPT_PROTOCOLS["candidate"]),
                                     domain="movie", llm=LLM, evaluation={**EVALUATION, "max_new_tokens": 3},
                                     hooks_for=hooks_for)
    flipped = evaluate.reversed_candidates(SAMPLES)
    assert [candidates for candidates, _ in seen] == [SAMPLES["candidates"].tolist(), flipped["candidates"].tolist()]
    assert seen[1][1] == evaluate.prompt_inputs(flipped, ITEMS, tokenizer, "movie", LLM)["candidate_prompt"]
    assert set(rows) == {0, 1}  # both the forward and the reversed passes ran under their hooks
    assert set(values) == {"likelihood", "likelihood_norm", "likelihood_reversed", "generation",
                           "generation_constrained"}


def test_the_summary_shows_the_new_metrics():
    from workflow import summary

    ids = [f"s{i}" for i in range(4)]

    def rows(method, protocol, metric, values):
        return pd.DataFrame({"dataset": "toy", "method": method, "selection": "none", "protocol": protocol,
                             "split": "test", "sample_id": ids, "user_id": ids, "metric": metric,
                             "value": np.asarray(values, dtype=float)})

    long = pd.concat([
        rows("base-candidate", "generation", "valid", [1, 0, 0, 0]),
        rows("base-candidate", "generation", "hit", [1, 0, 0, 0]),
        rows("base-candidate", "generation", "several", [0, 1, 0, 0]),
        rows("base-candidate", "generation", "history", [0, 0, 1, 0]),
        rows("base-candidate", "generation", "outside", [0, 0, 0, 0]),
        rows("base-candidate", "generation", "nothing", [0, 0, 0, 1]),
        rows("base-candidate", "generation_constrained", "valid", [1, 1, 1, 1]),
        rows("base-candidate", "generation_constrained", "hit", [1, 1, 0, 0]),
        rows("base-candidate", "likelihood_reversed", "hr@1", [0, 1, 0, 0]),
        rows("base-candidate", "likelihood_reversed", "top_changed", [1, 1, 1, 0]),
        rows("popularity", "likelihood", "hr@1", [1, 0, 0, 0]),
    ], ignore_index=True)
    table = summary.summarize(long, resamples=20, level=0.9, seed=0)

    def value(protocol, metric):
        return table[(table["protocol"] == protocol) & (table["metric"] == metric)
                     & (table["method"] == "base-candidate")]["value"].item()

    assert [value("generation", m) for m in ("valid", "several", "history", "outside", "nothing")] == \
        [0.25, 0.25, 0.25, 0.0, 0.25]
    assert value("generation_constrained", "hit") == 0.5 and value("generation_constrained", "hr@1_valid") == 0.5
    assert value("likelihood_reversed", "top_changed") == 0.75
    # the reversed order is read against popularity's candidate ranking: 0.25 - 0.25
    reversed_hr1 = table[(table["protocol"] == "likelihood_reversed") & (table["metric"] == "hr@1")]
    assert reversed_hr1["delta_vs_popularity"].item() == pytest.approx(0.0)
    text = summary.markdown(table, 20, 0.9, 0)
    assert "### likelihood_reversed" in text and "top_changed" in text
    assert "### generation_constrained" in text
