"""LLM evaluation protocols: the generation match rule, likelihood ranks, grounded ranking, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from workflow import metrics, prepare
from workflow.llm import evaluate, grounding

TITLES = ["Alien (1979)", "Aliens (1986)", "Heat (1995)", "The Matrix (1999)", "Fargo (1996)", "Casino (1995)",
          "Up (2009)", "Jaws (1975)", "Rocky (1976)", "Brazil (1985)", "Psycho (1960)", "Vertigo (1958)"]



# --- generation: the match rule ---------------------------------------------------------------

@pytest.mark.parametrize("answer, titles, found", [
    ("I would pick Brazil", ["Heat", "Fargo"], []),                          # no candidate named
    ("", ["Heat", "Fargo"], []),
    ("Fargo (1996)", ["Heat (1995)", "Fargo (1996)"], [1]),                  # exactly one
    ("Heat (1995) or Fargo (1996)", ["Heat (1995)", "Fargo (1996)"], [0, 1]),  # two titles
    ("Aliens (1986)", ["Aliens", "Aliens (1986)"], [1]),                    # shorter title inside the longer
    ("Alien and Aliens", ["Alien", "Aliens"], [0, 1]),                      # ... but also on its own
    ("Aliens", ["Alien", "Aliens"], [1]),
    ("  the   MATRIX\n(1999) ", ["The Matrix (1999)", "Up"], [0]),          # case and whitespace
    ("The Matrix (1999)", ["the matrix  (1999)", "Up (2009)"], [0]),
    ("Heat", ["Heat", "heat "], [0, 1]),                                    # same normalised title twice
])
def test_matched_candidates(answer, titles, found):
    assert evaluate.matched_candidates(answer, titles) == found
    assert evaluate.match_answer(answer, titles) == (found[0] if len(found) == 1 else None)


# --- tiny model helpers -----------------------------------------------------------------------

def tiny_data(n_test=3, n_candidates=4, seed=0):
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(len(TITLES))], "title": TITLES,
                          "categories": [[] for _ in TITLES]})
    rows = []
    for s in range(n_test + 1):
        order = rng.permutation(len(TITLES))
        history, target = order[:3], order[3]
        candidates = rng.permutation(np.r_[target, order[4:4 + n_candidates - 1]])
        rows.append({"sample_id": f"s{s}", "split": "test" if s < n_test else "train", "user_id": f"u{s % 2}",
                     "history": [f"i{k}" for k in history], "target": f"i{target}",
                     "candidates": [f"i{k}" for k in candidates]})
    return pd.DataFrame(rows), items


LLM = {"device": "cpu", "dtype": "float32", "max_title_tokens": 24, "max_prompt_tokens": 512}
EVALUATION = {"protocols": ["likelihood", "generation", "grounded"], "max_new_tokens": 4, "batch_size": 2,
              "splits": ["test"]}


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tokenizer = evaluate.load_for_evaluation(tiny_model_dir, device="cpu", dtype="float32")
    return model, tokenizer


def test_load_for_evaluation_bf16_gives_autocast_results(tiny_model_dir):
    """Loaded for a bf16 evaluation: sdpa attention, nothing requires gradients, the linear weights
    stored in bf16 except the tied LM head; scores and generated tokens are exactly those of the
    fp32-weight model under bf16 autocast (the cast only moves autocast's per-matmul cast)."""
    from workflow.llm.model import autocast, load_model
    from workflow.llm.scoring import candidate_logprobs

    model, tokenizer = evaluate.load_for_evaluation(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert model.config._attn_implementation == "sdpa"
    assert not any(p.requires_grad for p in model.parameters())
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert model.lm_head.weight.dtype == torch.float32
    plain, _ = load_model(tiny_model_dir, device="cpu", dtype="bfloat16", training=False)
    samples, items = tiny_data(n_test=3)
    inputs = evaluate.prompt_inputs(samples, items, tokenizer, "movie", LLM)
    bf16 = lambda: autocast("cpu", "bfloat16")  # noqa: E731
    results = []
    for m in (model, plain):
        with torch.no_grad(), bf16():
            logprob, _ = candidate_logprobs(m, inputs["candidate_prompt"], inputs["answers"])
        answers = evaluate.greedy_answers(m, tokenizer, inputs["open_prompt"], 6, 2, bf16)
        results.append((logprob, answers))
    assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]


# --- likelihood -------------------------------------------------------------------------------

def test_likelihood_ranks_follow_the_scorers_logprobs(tiny):
    from workflow.llm.scoring import candidate_logprobs

    model, tokenizer = tiny
    samples, items = tiny_data(n_test=3)
    samples = samples[samples["split"] == "test"].reset_index(drop=True)
    pred, values = evaluate.evaluate(model, tokenizer, samples, items, protocols=["likelihood"], domain="movie",
                                     llm=LLM, evaluation=EVALUATION)
    inputs = evaluate.prompt_inputs(samples, items, tokenizer, "movie", LLM)
    for row in range(len(samples)):  # batched scoring equals scoring each sample alone
        with torch.no_grad():
            lp, nt = candidate_logprobs(model, [inputs["candidate_prompt"][row]], [inputs["answers"][row]])
        np.testing.assert_allclose(pred["candidate_logprob"][row], lp[0].numpy(), atol=1e-4)
        np.testing.assert_array_equal(pred["candidate_tokens"][row], nt[0].numpy())
        logprob = np.asarray(pred["candidate_logprob"][row])
        target = pred["candidates"][row].index(pred["target"][row])
        others = np.delete(logprob, target)
        assert pred["target_rank"][row] == (others >= logprob[target]).sum()
        norm = logprob / np.asarray(pred["candidate_tokens"][row])
        assert pred["target_rank_norm"][row] == (np.delete(norm, target) >= norm[target]).sum()
        assert values["likelihood"]["hr@1"][row] == float(pred["target_rank"][row] == 0)
        assert values["likelihood"]["mrr"][row] == pytest.approx(1 / (pred["target_rank"][row] + 1))
    assert set(values) == {"likelihood", "likelihood_norm"}
    assert pred["generated"].isna().all() and pred["grounded_target_rank"].isna().all()


# --- generation: batching -----------------------------------------------------------------------

def test_batched_greedy_answers_equal_one_at_a_time(tiny):
    model, tokenizer = tiny
    samples, items = tiny_data(n_test=3)
    inputs = evaluate.prompt_inputs(samples, items, tokenizer, "movie", LLM)
    prompts = inputs["candidate_prompt"][:1] + inputs["open_prompt"][:2]  # different lengths: left padding
    together = evaluate.greedy_answers(model, tokenizer, prompts, 5, batch_size=3, autocast=torch.no_grad)
    alone = [evaluate.greedy_answers(model, tokenizer, [p], 5, batch_size=1, autocast=torch.no_grad)[0]
             for p in prompts]
    assert together == alone
    assert all(isinstance(a, str) for a in together)


def test_generation_metrics_from_the_answers(tiny, monkeypatch):
    model, tokenizer = tiny
    samples, items = tiny_data(n_test=3)
    samples = samples[samples["split"] == "test"].reset_index(drop=True)
    title = dict(zip(items["item_id"], items["title"]))
    other = [next(c for c in cands if c != t) for cands, t in zip(samples["candidates"], samples["target"])]
    answers = [f"I think {title[samples['target'][0]].upper()}.", title[other[1]], "no idea"]
    monkeypatch.setattr(evaluate, "encoded_passes", lambda *a, **k: evaluate.PassOutputs(None, None, answers, None))
    pred, values = evaluate.evaluate(model, tokenizer, samples, items, protocols=["generation"], domain="movie",
                                     llm=LLM, evaluation=EVALUATION)
    np.testing.assert_array_equal(values["generation"]["valid"], [1, 1, 0])
    np.testing.assert_array_equal(values["generation"]["hit"], [1, 0, 0])
    assert pred["matched_item"][:2].tolist() == [samples["target"][0], other[1]] and pd.isna(pred["matched_item"][2])
    assert pred["generated"].tolist() == answers


# --- grounded ---------------------------------------------------------------------------------

def test_embeddings_do_not_depend_on_batch_padding(tiny):
    model, tokenizer = tiny
    texts = ["Heat (1995)", "a much longer generated answer about some movie", ""]
    together = grounding.embed_texts(model, tokenizer, texts, batch_size=3)
    alone = np.concatenate([grounding.embed_texts(model, tokenizer, [t], batch_size=1) for t in texts])
    assert together.shape == (3, model.config.hidden_size) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_grounded_ranking_on_a_hand_made_table():
    table = np.array([[0, 0], [1, 0], [0, 2], [3, 3], [-1, -1]], dtype=np.float32)
    index = grounding.item_index(table)
    queries = np.array([[0.9, 0.1], [0.9, 0.1], [2.9, 2.8]], dtype=np.float32)
    # distances from (0.9, 0.1): item1 0.02 < item0 0.82 < item2 4.42 < item4 4.82 < item3 15.25
    ranks, tops = evaluate.grounded_ranking(queries, index, target_index=np.array([1, 0, 3]),
                                            history_index=[[2], [1], [3]], top=3)
    np.testing.assert_array_equal(ranks, [0, 0, 0])  # sample 1: its history item 1 is excluded
    np.testing.assert_array_equal(tops, [[1, 0, 4], [0, 2, 4], [3, 2, 1]])
    ranks, _ = evaluate.grounded_ranking(queries[:1], index, np.array([2]), [[]], top=3)
    assert ranks[0] == 2
    full = metrics.full_ranking_metrics(np.array([2]))
    assert full["hr@1"][0] == 0 and full["hr@5"][0] == 1


def test_adapter_is_disabled_for_embedding(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from workflow.llm.model import load_model

    base, tokenizer = load_model(tiny_model_dir, device="cpu", dtype="float32")
    reference = grounding.embed_texts(base, tokenizer, ["Heat (1995)"])
    torch.manual_seed(0)
    tuned = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    tuned.eval()
    with evaluate.base_model_only(tuned):
        np.testing.assert_allclose(grounding.embed_texts(tuned, tokenizer, ["Heat (1995)"]), reference, atol=1e-5)
    assert not np.allclose(grounding.embed_texts(tuned, tokenizer, ["Heat (1995)"]), reference, atol=1e-3)


# --- the command lines, end to end -------------------------------------------------------------

def test_cli_end_to_end_with_and_without_adapter(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from workflow.llm.model import load_model

    samples, items = tiny_data(n_test=3)
    # an item no sample uses (as the k-core filter leaves them in items.parquet): never ranked
    items = pd.concat([items, pd.DataFrame({"item_id": ["unused"], "title": ["Toy Story (1995)"],
                                            "categories": [[]]})], ignore_index=True)
    universe = prepare.item_vocabulary(samples, items)
    samples.to_parquet(tmp_path / "samples.parquet")
    items.to_parquet(tmp_path / "items.parquet")
    emb = tmp_path / "title_embeddings.parquet"
    assert grounding.main(["--model-dir", str(tiny_model_dir), "--items", str(tmp_path / "items.parquet"),
                           "--out", str(emb), "--dtype", "float32", "--threads", "1"]) == 0
    table = pd.read_parquet(emb)
    assert table["item_id"].tolist() == items["item_id"].tolist() and len(table["embedding"][0]) == 64

    base, _ = load_model(tiny_model_dir, device="cpu", dtype="float32")
    torch.manual_seed(0)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)) \
        .save_pretrained(tmp_path / "adapter")

    outputs = {}
    runs = (("base-candidate", [], "candidate"), ("base-open", [], "open"),
            ("sft-open", ["--adapter", str(tmp_path / "adapter")], "open"))
    for run, adapter, prompt in runs:
        protocols = ["likelihood", *(("generation", "generation_constrained", "likelihood_reversed")
                                     if prompt == "candidate" else ("grounded",))]
        # the open runs decode a seeded 2 of the 3 test samples
        evaluation = {**EVALUATION, "protocols": protocols, "generation_samples": None if prompt == "candidate" else 2}
        spec = json.dumps({"llm": LLM, "evaluation": evaluation, "domain": "movie", "prompt": prompt})
        pred_path, metrics_path = tmp_path / f"{run}_pred.parquet", tmp_path / f"{run}_metrics.parquet"
        argv = ["--model-dir", str(tiny_model_dir), *adapter, "--samples", str(tmp_path / "samples.parquet"),
                "--items", str(tmp_path / "items.parquet"), "--title-embeddings", str(emb), "--spec", spec,
                "--dataset", "toy", "--run", run, "--selection", "random" if adapter else "none",
                "--seed", "0", "--threads", "1", "--predictions", str(pred_path), "--metrics", str(metrics_path)]
        assert evaluate.main(argv) == 0
        outputs[run] = pd.read_parquet(pred_path), pd.read_parquet(metrics_path)

    pred, long = outputs["base-candidate"]
    assert list(pred.columns) == evaluate.PREDICTIONS_SCHEMA.names
    assert pred["sample_id"].tolist() == ["s0", "s1", "s2"]  # test split only
    assert pred["candidate_logprob"].map(len).eq(4).all()
    assert list(long.columns) == metrics.FRAME_COLUMNS
    per_protocol = long.groupby("protocol")["metric"].nunique().to_dict()
    assert per_protocol == {"likelihood": 6, "likelihood_norm": 6, "generation": 6, "generation_constrained": 2,
                            "likelihood_reversed": 7}
    assert len(long) == 3 * 27 and long["value"].between(0, 1).all()
    assert (long["method"] == "base-candidate").all() and (long["selection"] == "none").all()
    valid = long[(long["protocol"] == "generation") & (long["metric"] == "valid")].set_index("sample_id")["value"]
    assert valid.to_dict() == {s: float(pd.notna(m)) for s, m in zip(pred["sample_id"], pred["matched_item"])}
    assert pred["answer_category"].isin(["valid", *evaluate.ANSWER_ERRORS]).all()
    assert pred["constrained_item"].notna().all() and pred["candidate_logprob_reversed"].map(len).eq(4).all()
    assert pred["open_generated"].isna().all() and pred["grounded_top"].isna().all()

    open_pred, open_long = outputs["base-open"]
    # the open prompt scores the same candidates under another prompt: other log-probs
    assert not np.allclose(np.stack(open_pred["candidate_logprob"]), np.stack(pred["candidate_logprob"]))
    assert set(open_long["protocol"]) == {"likelihood", "likelihood_norm", "grounded"}
    grounded = open_long[open_long["protocol"] == "grounded"]
    decoded = open_pred["open_generated"].notna()
    assert decoded.sum() == 2 and sorted(grounded["sample_id"].unique()) == sorted(open_pred["sample_id"][decoded])
    assert grounded["metric"].nunique() == 8 and len(grounded) == 2 * 8
    # grounded ranks the item universe (12 items here; 13 with the unused one), never the unused item
    top = open_pred.loc[decoded, "grounded_top"]
    assert "unused" not in universe and top.map(len).eq(len(universe)).all()
    assert all(set(t) <= set(universe) for t in top)
    assert open_pred["generated"].isna().all()

    tuned_pred, tuned_long = outputs["sft-open"]
    assert (tuned_long["selection"] == "random").all()
    # the same seeded subset is decoded for every run, so generation metrics stay paired
    assert tuned_pred["open_generated"].notna().tolist() == decoded.tolist()
    assert not np.allclose(np.stack(tuned_pred["candidate_logprob"]), np.stack(open_pred["candidate_logprob"]))


def test_generation_subset_is_seeded_and_order_free():
    ids = [f"s{i}" for i in range(20)]
    mask = evaluate.generation_subset(ids, 5, seed=3)
    assert mask.sum() == 5
    again = evaluate.generation_subset(ids[::-1], 5, seed=3)[::-1]
    np.testing.assert_array_equal(mask, again)  # the same samples whatever the row order
    assert not np.array_equal(mask, evaluate.generation_subset(ids, 5, seed=4))
    assert evaluate.generation_subset(ids, None, 0).all() and evaluate.generation_subset(ids, 50, 0).all()


def test_a_protocol_the_prompt_cannot_serve_is_refused(tiny):
    model, tokenizer = tiny
    samples, items = tiny_data(n_test=2)
    with pytest.raises(ValueError, match="grounded"):
        evaluate.evaluate(model, tokenizer, samples[samples["split"] == "test"], items, protocols=["grounded"],
                          domain="movie", llm=LLM, evaluation=EVALUATION, prompt="candidate")


def test_cli_reports_a_bad_spec_key(tiny_model_dir, tmp_path):
    samples, items = tiny_data()
    samples.to_parquet(tmp_path / "s.parquet")
    items.to_parquet(tmp_path / "i.parquet")
    argv = ["--model-dir", str(tiny_model_dir), "--samples", str(tmp_path / "s.parquet"),
            "--items", str(tmp_path / "i.parquet"), "--spec", json.dumps({"evaluation": {"batch_size": 0}}),
            "--dataset", "toy", "--run", "base", "--selection", "none", "--seed", "0",
            "--predictions", str(tmp_path / "p.parquet"), "--metrics", str(tmp_path / "m.parquet")]
    assert evaluate.main(argv) == 1
    with pytest.raises(ValueError, match="evaluation.batch_size"):
        evaluate.settings({"evaluation": {"batch_size": 0}})
    assert not (tmp_path / "m.parquet").exists()
