"""Token explanations (workflow/llm/explain.py) on a tiny Llama with two random LoRA adapters, fp32."""
from __future__ import annotations

import functools
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from test_evaluate import EVALUATION, LLM, tiny_data
from workflow.io import read_provenance, write_parquet
from workflow.llm import evaluate, explain

N_TEST = 3
SPEC = {"llm": LLM, "evaluation": {**EVALUATION, "protocols": ["likelihood"]}, "explanations": {"n_samples": 2},
        "domain": "movie"}


def random_adapter(model_dir, out, seed):
    """A LoRA adapter with random (non-zero) A and B, so the adapted model differs from the base."""
    from peft import LoraConfig, get_peft_model

    from workflow.llm.model import load_model

    base, _ = load_model(model_dir, device="cpu", dtype="float32")
    torch.manual_seed(seed)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)) \
        .save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    """Samples, items, an sft and a dmpo adapter, and each run's predictions from the real evaluation."""
    tmp = tmp_path_factory.mktemp("explain")
    samples, items = tiny_data(n_test=N_TEST)
    samples.to_parquet(tmp / "samples.parquet")
    items.to_parquet(tmp / "items.parquet")
    paths = {"dir": tmp, "samples": tmp / "samples.parquet", "items": tmp / "items.parquet"}
    test = samples[samples["split"] == "test"].reset_index(drop=True)
    for method, seed in (("sft", 1), ("dmpo", 2)):
        adapter = random_adapter(tiny_model_dir, tmp / method / "adapter", seed)
        model, tokenizer = evaluate.load_for_evaluation(tiny_model_dir, adapter, device="cpu", dtype="float32")
        predictions, _ = evaluate.evaluate(model, tokenizer, test, items, protocols=["likelihood"], domain="movie",
                                           llm=LLM, evaluation=EVALUATION)
        write_parquet(predictions, tmp / method / "predictions.parquet", schema=evaluate.PREDICTIONS_SCHEMA)
        paths[method] = {"adapter": adapter, "predictions": tmp / method / "predictions.parquet"}
    return paths


def run_explain(tiny_model_dir, run, method, reference_method, n_samples=N_TEST, predictions_of=None,
                predictions=None, items=None):
    """Explain `method`'s run against `reference_method`'s adapter (None: the base model), with the
    predictions of `predictions_of` (default: the run's own) or the given frame."""
    model, tokenizer, reference = explain.load_models(
        tiny_model_dir, run[method]["adapter"], reference_method and run[reference_method]["adapter"],
        device="cpu", dtype="float32")
    samples = explain.first_samples(evaluate.read_samples(run["samples"], ["test"]), n_samples, run["samples"])
    predictions_path = run[predictions_of or method]["predictions"]
    if predictions is None:
        predictions = pd.read_parquet(predictions_path)
    if items is None:
        items = pd.read_parquet(run["items"])
    tokens = explain.explain(model, tokenizer, samples, items, predictions, reference=reference, domain="movie",
                             llm=LLM, batch_size=2, predictions_path=predictions_path)
    return tokens, samples, tokenizer


@functools.lru_cache(maxsize=4)
def separately_loaded(model_dir, adapter):
    """(model, tokenizer) loaded on their own: one adapter at most, never switched."""
    return evaluate.load_for_evaluation(model_dir, adapter, device="cpu", dtype="float32")


def full_forward_logprobs(model_dir, adapter, prompt, answer):
    """Naive oracle: one forward of prompt+answer through a separately loaded model, the answer's
    token log-probs read from the full-vocabulary log-softmax."""
    model, _ = separately_loaded(model_dir, adapter)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([list(prompt) + list(answer)])).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1)
    return logp.gather(-1, torch.tensor(answer)[:, None])[:, 0].numpy()


def top_answer(tokenizer, sample_index, tokens):
    """(prompt ids, answer ids) the evaluation used for the explained candidate of one sample."""
    samples, items = tiny_data(n_test=N_TEST)
    inputs = evaluate.prompt_inputs(samples.iloc[[sample_index]], items, tokenizer, "movie", LLM)
    item = tokens["item_id"].iloc[0]
    return inputs["candidate_prompt"][0], inputs["answers"][0][samples["candidates"][sample_index].index(item)]


@pytest.mark.parametrize("method, reference_method", [("dmpo", "sft"), ("sft", None)])
def test_token_logprobs_equal_a_full_forward_of_each_model(tiny_model_dir, run, method, reference_method):
    tokens, samples, tokenizer = run_explain(tiny_model_dir, run, method, reference_method)
    predictions = pd.read_parquet(run[method]["predictions"]).set_index("sample_id")
    reference_adapter = reference_method and run[reference_method]["adapter"]  # None: the base model
    for i, sample_id in enumerate(samples["sample_id"]):
        rows = tokens[tokens["sample_id"] == sample_id]
        prompt, answer = top_answer(tokenizer, i, rows)
        assert rows["token_id"].tolist() == answer and rows["position"].tolist() == list(range(len(answer)))
        tuned = full_forward_logprobs(tiny_model_dir, run[method]["adapter"], prompt, answer)
        ref = full_forward_logprobs(tiny_model_dir, reference_adapter, prompt, answer)
        np.testing.assert_allclose(rows["logprob_tuned"], tuned, atol=1e-4)
        np.testing.assert_allclose(rows["logprob_reference"], ref, atol=1e-4)
        scores = predictions.loc[sample_id, "candidate_logprob"]
        assert rows["logprob_tuned"].sum() == pytest.approx(scores.max(), abs=1e-4)
    np.testing.assert_array_equal(tokens["delta"], (tokens["logprob_tuned"] - tokens["logprob_reference"])
                                  .astype(np.float32))
    assert tokens["delta"].abs().max() > 1e-3  # the two models differ, so the test can see a swap


def test_top_candidate_is_the_argmax_of_the_predictions(tiny_model_dir, run):
    tokens, samples, tokenizer = run_explain(tiny_model_dir, run, "dmpo", "sft")
    predictions = pd.read_parquet(run["dmpo"]["predictions"]).set_index("sample_id")
    items = pd.read_parquet(run["items"]).set_index("item_id")
    per_sample = tokens.groupby("sample_id", sort=False).first()
    assert per_sample.index.tolist() == samples["sample_id"].tolist()  # samples.parquet order
    for sample_id, row in per_sample.iterrows():
        candidates, scores = predictions.loc[sample_id, ["candidates", "candidate_logprob"]]
        assert row["item_id"] == candidates[int(np.argmax(scores))]
        assert row["title"] == items.loc[row["item_id"], "title"]
        assert row["is_target"] == (row["item_id"] == predictions.loc[sample_id, "target"])
        assert row["candidate_rank"] == 0
    decoded = tokens.groupby("sample_id", sort=False)["token"].sum()
    assert all(text.startswith(per_sample.loc[s, "title"]) for s, text in decoded.items())
    assert (tokens.groupby("sample_id")["token_id"].last() == explain_end_token(tokenizer)).all()


def explain_end_token(tokenizer):
    from workflow.llm.prompts import end_of_answer_id

    return end_of_answer_id(tokenizer)


def test_predictions_of_another_model_are_refused(tiny_model_dir, run):
    # The sft run's predictions rank with other scores: its top candidates' scores do not match the
    # dmpo model's log-probs (the ranking is read, never re-scored, so this is the only guard).
    with pytest.raises(ValueError, match=r"sft/predictions.parquet: sample 's\d'.*differs"):
        run_explain(tiny_model_dir, run, "dmpo", "sft", predictions_of="sft")


def test_html_escapes_titles_and_highlights_every_token(tiny_model_dir, run):
    items = pd.read_parquet(run["items"])
    items["title"] = items["title"] + " <Tom & Jerry>"
    tokens, samples, _ = run_explain(tiny_model_dir, run, "dmpo", "sft", n_samples=2, items=items,
                                     predictions=rescored_predictions(tiny_model_dir, run, items))
    titles = dict(zip(items["item_id"], items["title"]))
    page = explain.render_html(tokens, samples, titles, "toy / dmpo & co / random")
    assert "<Tom & Jerry>" not in page and "&lt;Tom &amp; Jerry&gt;" in page
    assert "dmpo &amp; co" in page
    assert page.count('<span class="tok" style="background: rgba(') == len(tokens) + 2  # + the legend's two
    assert any("<" in t for t in tokens["token"]) and any("&" in t for t in tokens["token"])
    assert not re.search(r"<(?![a-zA-Z/!])", page)  # every `<` opens a tag: none left in text
    assert not re.search(r"&(?!(amp|lt|gt|quot|#x27);)", page)  # every `&` starts an entity
    assert highlighted_texts(page)[2:] == tokens["token"].tolist()  # parsed back: one span per token
    assert page.count("<section") == len(samples) == 2
    for text in ("<script", "<link", "http://", "https://", "src="):
        assert text not in page  # self-contained
    strongest = tokens.loc[tokens["delta"].abs().idxmax()]
    colour = "0, 160, 0" if strongest["delta"] > 0 else "220, 0, 0"
    assert f"rgba({colour}, 1.000)" in page  # the largest |delta| gets full colour
    assert f"delta {strongest['delta']:+.4f}" in page  # tooltip numbers


def highlighted_texts(page):
    """The text of every `<span class="tok">` of a page, in page order, as a browser would read it."""
    from html.parser import HTMLParser

    class Spans(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.texts, self.inside = [], False

        def handle_starttag(self, tag, attrs):
            if tag == "span" and ("class", "tok") in attrs:
                self.texts.append("")
                self.inside = True

        def handle_endtag(self, tag):
            self.inside = False

        def handle_data(self, data):
            if self.inside:
                self.texts[-1] += data

    parser = Spans()
    parser.feed(page)
    return parser.texts


def rescored_predictions(tiny_model_dir, run, items):
    """The dmpo run's predictions for changed titles (the scores depend on the titles)."""
    model, tokenizer = evaluate.load_for_evaluation(tiny_model_dir, run["dmpo"]["adapter"], device="cpu",
                                                    dtype="float32")
    samples = evaluate.read_samples(run["samples"], ["test"])
    predictions, _ = evaluate.evaluate(model, tokenizer, samples, items, protocols=["likelihood"], domain="movie",
                                       llm=LLM, evaluation=EVALUATION)
    return predictions


def cli_args(tiny_model_dir, run, out_dir, method="dmpo", reference=True, spec=SPEC):
    return ["--model-dir", str(tiny_model_dir), "--adapter", str(run[method]["adapter"]),
            *(["--reference-adapter", str(run["sft"]["adapter"])] if reference else []),
            "--predictions", str(run[method]["predictions"]), "--samples", str(run["samples"]),
            "--items", str(run["items"]), "--spec", json.dumps(spec), "--dataset", "toy", "--run", method,
            "--selection", "random", "--seed", "0", "--threads", "1",
            "--out-parquet", str(out_dir / "explanations.parquet"), "--out-html", str(out_dir / "explanations.html")]


def test_cli_writes_both_outputs_with_provenance(tiny_model_dir, run, tmp_path):
    assert explain.main(cli_args(tiny_model_dir, run, tmp_path)) == 0
    table = pd.read_parquet(tmp_path / "explanations.parquet")
    assert list(table.columns) == explain.EXPLANATIONS_SCHEMA.names
    assert table["sample_id"].unique().tolist() == ["s0", "s1"]  # n_samples=2: the first two test samples
    assert table["logprob_tuned"].dtype == np.float32 and table["token_id"].dtype == np.int32
    provenance = read_provenance(tmp_path / "explanations.parquet")
    assert provenance["config"]["explanations"] == {"n_samples": 2, "methods": ["dmpo", "sdpo", "dynamicpo"]}
    assert provenance["reference_adapter"] == str(run["sft"]["adapter"]) and provenance["seed"] == 0
    page = (tmp_path / "explanations.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.count('<span class="tok"') == len(table) + 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explanations.html", "explanations.parquet"]  # no temp


def test_cli_without_reference_adapter_uses_the_base_model(tiny_model_dir, run, tmp_path):
    assert explain.main(cli_args(tiny_model_dir, run, tmp_path, method="sft", reference=False)) == 0
    table = pd.read_parquet(tmp_path / "explanations.parquet")
    expected, _, _ = run_explain(tiny_model_dir, run, "sft", None, n_samples=2)
    np.testing.assert_allclose(table["logprob_reference"], expected["logprob_reference"], atol=1e-5)


def test_bad_inputs_name_the_file(tiny_model_dir, run, tmp_path):
    too_many = {**SPEC, "explanations": {"n_samples": N_TEST + 1}}
    assert explain.main(cli_args(tiny_model_dir, run, tmp_path, spec=too_many)) == 1
    assert not list(tmp_path.iterdir())  # nothing written, not even a partial file
    samples = evaluate.read_samples(run["samples"], ["test"])
    with pytest.raises(ValueError, match=rf"{run['samples']}: explanations.n_samples=4, but only 3 samples"):
        explain.first_samples(samples, N_TEST + 1, run["samples"])

    predictions = pd.read_parquet(run["dmpo"]["predictions"])
    with pytest.raises(ValueError, match=rf"{run['dmpo']['predictions']}: no rows for 1 of the samples.*'s1'"):
        explain.top_candidates(samples, predictions[predictions["sample_id"] != "s1"], run["dmpo"]["predictions"])
    no_scores = predictions.assign(candidate_logprob=None)
    with pytest.raises(ValueError, match="has no candidate_logprob.*likelihood"):
        explain.top_candidates(samples, no_scores, run["dmpo"]["predictions"])
    shuffled = predictions.assign(candidates=predictions["candidates"].map(lambda c: list(c)[::-1]))
    with pytest.raises(ValueError, match="candidates differ"):
        explain.top_candidates(samples, shuffled, run["dmpo"]["predictions"])
    write_parquet(predictions.drop(columns=["candidate_logprob"]), tmp_path / "old.parquet")
    with pytest.raises(ValueError, match=r"old.parquet: missing columns \['candidate_logprob'\]"):
        explain.read_predictions(tmp_path / "old.parquet")
    with pytest.raises(ValueError, match="explanations.n_samples"):
        explain.settings({"explanations": {"n_samples": 0}})


def test_predictions_are_matched_by_sample_id_not_row_order(tiny_model_dir, run):
    in_order, _, _ = run_explain(tiny_model_dir, run, "dmpo", "sft")
    shuffled = pd.read_parquet(run["dmpo"]["predictions"]).iloc[::-1].reset_index(drop=True)
    reordered, _, _ = run_explain(tiny_model_dir, run, "dmpo", "sft", predictions=shuffled)
    pd.testing.assert_frame_equal(in_order, reordered)
