"""Item semantic IDs (workflow/semantic_ids.py) and the sid prompt's runs on a tiny Llama: codes
unique, tokens added and trained by PEFT's trainable tokens (every other embedding row frozen), the
catalogue protocol returning valid distinct items."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch

from test_sft import LLM, SFT, tables
from workflow import semantic_ids
from workflow.llm import evaluate, sft
from workflow.llm.model import add_item_tokens, item_token_ids, load_for_evaluation, load_model


def test_residual_codes_quantise_level_by_level():
    gen = np.random.default_rng(0)
    centres = gen.normal(size=(4, 8)) * 10
    x = np.concatenate([c + gen.normal(size=(25, 8)) * 0.1 for c in centres]).astype(np.float32)
    codes = semantic_ids.residual_codes(x, levels=2, codebook_size=4, seed=0)
    # level 1 recovers the four well-separated clusters exactly
    for k in range(4):
        assert len(set(codes[k * 25:(k + 1) * 25, 0])) == 1
    assert len(set(codes[:, 0])) == 4
    # level 2 quantises what level 1 left: with each level's centroids taken as its groups' means,
    # the two-level reconstruction is closer than the one-level one
    def group_means(values, labels):
        return np.stack([values[labels == c].mean(0) if (labels == c).any() else np.zeros(values.shape[1])
                         for c in range(4)])[labels]

    one = group_means(x, codes[:, 0])
    two = one + group_means(x - one, codes[:, 1])
    assert codes.shape == (100, 2) and codes.max() < 4
    assert ((x - two) ** 2).sum() < ((x - one) ** 2).sum()


def test_collisions_get_an_extra_numbering_code():
    codes = np.array([[1, 2], [1, 2], [0, 1], [1, 2], [0, 0]])
    out = semantic_ids.deduplicated(codes)
    np.testing.assert_array_equal(out[:, 2], [0, 1, 0, 2, 0])
    assert len({tuple(r) for r in out}) == len(out)
    assert semantic_ids.sid_string(out[1]) == "<a_1><b_2><c_1>"


def test_semantic_ids_unique_even_for_identical_embeddings():
    gen = np.random.default_rng(1)
    emb = gen.normal(size=(30, 16)).astype(np.float32)
    emb[5] = emb[6] = emb[7]  # identical text -> identical embedding
    ids = [f"i{k:02d}" for k in range(30)]
    table = semantic_ids.semantic_ids(ids, emb, {"levels": 2, "codebook_size": 4, "iterations": 10}, seed=3)
    assert table["sid"].is_unique and len(table) == 30
    assert table["item_id"].tolist() == sorted(ids)
    assert all(len(c) == 3 for c in table["codes"])
    again = semantic_ids.semantic_ids(ids, emb, {"levels": 2, "codebook_size": 4, "iterations": 10}, seed=3)
    pd.testing.assert_frame_equal(table, again)  # seeded: the same IDs every time


def test_item_embeddings_from_two_sources_weigh_the_same(tmp_path):
    gen = np.random.default_rng(2)
    ids = [f"i{k}" for k in range(6)]
    wide = gen.normal(size=(6, 8)) * 1000.0  # a wide source on a large scale: must not dominate
    narrow = gen.normal(size=(6, 2))
    paths = []
    for name, rows in (("title", wide), ("sasrec", narrow)):
        path = tmp_path / f"{name}.parquet"
        # stored in another item order than asked for: rows are matched by item_id
        pd.DataFrame({"item_id": ids[::-1], "embedding": list(rows[::-1].astype(np.float32))}).to_parquet(path)
        paths.append(path)
    joined = semantic_ids.item_embeddings(paths, ids)
    assert joined.shape == (6, 10)
    for block, raw in ((joined[:, :8], wide), (joined[:, 8:], narrow)):
        np.testing.assert_allclose(np.linalg.norm(block, axis=1), 1.0, rtol=1e-5)  # unit rows per source
        centred = raw - raw.mean(axis=0)
        np.testing.assert_allclose(block, centred / np.linalg.norm(centred, axis=1, keepdims=True), rtol=1e-4,
                                   atol=1e-6)
    # one table alone is passed on as stored (semantic_ids normalises it)
    np.testing.assert_array_equal(semantic_ids.item_embeddings(paths[:1], ids), wide.astype(np.float32))
    with pytest.raises(ValueError, match="no embedding for 1 items"):
        semantic_ids.item_embeddings(paths, ids + ["unknown"])


def test_the_command_line_records_the_sources_it_quantised(tmp_path):
    from workflow.io import read_provenance

    gen = np.random.default_rng(4)
    ids = [f"i{k}" for k in range(12)]
    pd.DataFrame({"item_id": ids, "title": [f"Film {k}" for k in range(12)]}).to_parquet(tmp_path / "items.parquet")
    pd.DataFrame({"sample_id": ["s0"], "split": ["train"], "history": [ids[:6]], "target": [ids[6]],
                  "candidates": [ids[6:]]}).to_parquet(tmp_path / "samples.parquet")
    tables = []
    for name in ("title", "sasrec"):
        tables.append(str(tmp_path / f"{name}.parquet"))
        pd.DataFrame({"item_id": ids, "embedding": list(gen.normal(size=(12, 4)).astype(np.float32))}).to_parquet(
            tables[-1])
    argv = ["--items", str(tmp_path / "items.parquet"), "--samples", str(tmp_path / "samples.parquet"),
            "--embeddings", *tables, "--seed", "1", "--out", str(tmp_path / "codes.parquet"),
            "--out-items", str(tmp_path / "items_cid.parquet"), "--spec"]
    spec = {"levels": 2, "codebook_size": 3, "iterations": 5}
    assert semantic_ids.main([*argv, json.dumps({**spec, "embeddings": ["title", "sasrec"]})]) == 0
    assert read_provenance(tmp_path / "codes.parquet")["config"]["semantic_ids"] == {
        **spec, "embeddings": ["title", "sasrec"]}
    assert semantic_ids.sid_items(pd.read_parquet(tmp_path / "items_cid.parquet"))
    # a spec that does not name every table it is given fails, naming the key, and writes nothing
    (tmp_path / "codes.parquet").unlink()
    assert semantic_ids.main([*argv, json.dumps({**spec, "embeddings": ["title"]})]) != 0
    assert not (tmp_path / "codes.parquet").exists()


def test_sid_items_and_tokens():
    items = pd.DataFrame({"item_id": ["x", "y"], "title": ["<a_3><b_0>", "<a_10><b_1>"]})
    assert semantic_ids.sid_items(items)
    assert semantic_ids.sid_tokens(items) == ["<a_3>", "<a_10>", "<b_0>", "<b_1>"]
    titles = pd.DataFrame({"item_id": ["x"], "title": ["Heat (1995)"]})
    assert not semantic_ids.sid_items(titles) and semantic_ids.sid_tokens(titles) == []


@pytest.fixture
def sid_inputs(tmp_path):
    samples, items = tables()
    gen = np.random.default_rng(0)
    emb = gen.normal(size=(len(items), 12)).astype(np.float32)
    ids = semantic_ids.semantic_ids(items["item_id"].tolist(), emb, {"levels": 2, "codebook_size": 3,
                                                                      "iterations": 10}, seed=0)
    paths = {k: tmp_path / f"{k}.parquet" for k in ("samples", "items", "selection")}
    samples.to_parquet(paths["samples"])
    semantic_ids.sid_item_table(items, ids).to_parquet(paths["items"])
    pd.DataFrame({"sample_id": [f"s{k}" for k in range(8)]}).to_parquet(paths["selection"])
    return paths, ids


def test_sid_sft_trains_only_the_id_rows_and_evaluates_on_the_catalogue(tiny_model_dir, sid_inputs, tmp_path,
                                                                        monkeypatch):
    paths, ids = sid_inputs
    out = tmp_path / "adapter"
    spec = {"llm": LLM, "sft": {**SFT, "lora_dropout": 0.0, "lr": 0.05}, "domain": "movie", "prompt": "sid"}
    args = ["--model-dir", str(tiny_model_dir), "--samples", str(paths["samples"]), "--items", str(paths["items"]),
            "--selection", str(paths["selection"]), "--spec", json.dumps(spec), "--seed", "0", "--threads", "1",
            "--out", str(out)]
    assert sft.main(args) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    items = pd.read_parquet(paths["items"])
    tokens = semantic_ids.sid_tokens(items)
    base, tokenizer = load_model(tiny_model_dir, device="cpu", dtype="float32", attention="sdpa", training=False)
    added = add_item_tokens(base, tokenizer, tokens)
    assert config["trainable_token_indices"] == {"embed_tokens": added}
    assert len(added) == len(tokens) and added == item_token_ids(tokenizer)
    # an ID is one token per code: the tokenizer never splits it
    assert len(tokenizer.encode(ids["sid"].iloc[0], add_special_tokens=False)) == len(ids["codes"].iloc[0])
    # the adapter stores the ID rows only; after loading, those rows moved and every other row is the base's
    stored = safetensors.torch.load_file(out / "adapter_model.safetensors")
    assert not any("base_layer" in k for k in stored)  # not the resized embedding matrix
    delta = [v for k, v in stored.items() if "trainable_tokens_delta" in k]  # embed_tokens' and the tied lm_head's
    assert delta and all(d.shape[0] == len(added) for d in delta)
    torch.testing.assert_close(delta[0], delta[-1], rtol=0, atol=0)
    model, _ = load_for_evaluation(tiny_model_dir, out, device="cpu", dtype="float32", item_tokens=tokens)
    with torch.no_grad():
        embedded = model.get_input_embeddings()(torch.arange(len(tokenizer)))
    before = base.get_input_embeddings().weight
    others = torch.ones(len(tokenizer), dtype=torch.bool)
    others[added] = False
    torch.testing.assert_close(embedded[others], before[others], rtol=0, atol=0)
    assert (embedded[added] - before[added]).abs().sum(-1).gt(0).all()
    # evaluation: likelihood over the stored candidates' IDs and the catalogue's constrained beam search
    samples = evaluate.read_samples(paths["samples"], ["test"])
    evaluation = {"batch_size": 2, "max_new_tokens": 4, "generation_samples": None, "catalogue_beams": 4}
    frame, values = evaluate.evaluate(model, tokenizer, samples, items, protocols=["likelihood", "catalogue"],
                                      domain="movie", llm=LLM, evaluation=evaluation, prompt="sid")
    assert set(values) == {"likelihood", "likelihood_norm", "catalogue"}
    catalogue = set(items["item_id"])
    for top, history in zip(frame["catalogue_top"], samples["history"]):
        assert 0 < len(top) == len(set(top)) <= 20
        assert set(top) <= catalogue
    assert np.all(values["catalogue"]["invalid"] == 0) and np.all(values["catalogue"]["duplicate"] == 0)
    # the catalogue alone: its own search, no shared encoding pass (nothing there to score or generate)
    monkeypatch.setattr(evaluate, "encoded_passes", lambda *a, **k: pytest.fail("an encoding pass with nothing to do"))
    alone, alone_values = evaluate.evaluate(model, tokenizer, samples, items, protocols=["catalogue"], domain="movie",
                                            llm=LLM, evaluation=evaluation, prompt="sid")
    assert alone["catalogue_top"].tolist() == frame["catalogue_top"].tolist()
    for metric, per_sample in values["catalogue"].items():
        np.testing.assert_array_equal(alone_values["catalogue"][metric], per_sample)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="need the other prompt"):
        evaluate.evaluate(model, tokenizer, samples, items, protocols=["grounded"], domain="movie", llm=LLM,
                          evaluation=evaluation, prompt="sid")


def test_alignment_examples_and_token_learning_rate(tiny_model_dir, sid_inputs, tmp_path):
    """sft.sid_alignment adds ID -> title and title -> ID examples per item of the samples; the ID
    token rows train at token_lr_scale x lr without weight decay (their own AdamW group)."""
    from transformers import AutoTokenizer

    from workflow.llm import prompts, train

    paths, ids = sid_inputs
    items = pd.read_parquet(paths["items"])
    samples = pd.read_parquet(paths["samples"]).head(2)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = sft.alignment_examples(samples, items, tokenizer, "movie", LLM)
    used = sorted({i for h in samples["history"] for i in h} | set(samples["target"]))
    assert len(examples) == 2 * len(used)
    first = items.set_index("item_id").loc[used[0]]
    assert prompts.render(tokenizer, f"Which movie has the ID {first['title']}? Answer with the movie's title only.") \
        == examples[0]["prompt"]
    assert examples[1]["answer"] == prompts.answer_ids(tokenizer, first["title"])
    groups = train.param_groups({"lora_A": torch.nn.Parameter(torch.zeros(1)),
                                 "embed_tokens.token_adapter.trainable_tokens_delta.default": torch.nn.Parameter(torch.zeros(1))},
                                {"lr": 0.001, "weight_decay": 0.1, "token_lr_scale": 20.0})
    assert sorted((g["lr"], g["weight_decay"]) for g in groups) == [(0.001, 0.1), (0.02, 0.0)]
    out = tmp_path / "aligned"
    spec = {"llm": LLM, "sft": {**SFT, "lora_dropout": 0.0, "epochs": 1, "sid_alignment": True}, "domain": "movie",
            "prompt": "sid"}
    args = ["--model-dir", str(tiny_model_dir), "--samples", str(paths["samples"]), "--items", str(paths["items"]),
            "--selection", str(paths["selection"]), "--spec", json.dumps(spec), "--seed", "0", "--threads", "1",
            "--out", str(out)]
    assert sft.main(args) == 0
    config = json.loads((out / "training_config.json").read_text())["config"]
    n_items = len({i for h in pd.read_parquet(paths["samples"]).head(8)["history"] for i in h}
                  | set(pd.read_parquet(paths["samples"]).head(8)["target"]))
    assert config["n_samples"] == 8 + 2 * n_items


def test_rere_over_the_catalogue_of_semantic_ids(tiny_model_dir, sid_inputs, tmp_path):
    """rere (GRPO whose group is the policy's beam over the items' semantic IDs), from a sid sft adapter: the
    reference adapter (with its own ID rows) is switched in and out, the policy's ID rows train, only the
    policy is saved."""
    from workflow.llm import preference

    paths, _ = sid_inputs
    start = tmp_path / "sft"
    spec = {"llm": LLM, "sft": {**SFT, "lora_dropout": 0.0, "lr": 0.05}, "domain": "movie", "prompt": "sid"}
    sft.run_sft(tiny_model_dir, paths["samples"], paths["items"], paths["selection"], spec, 0, start)
    block = {"group_size": 3, "kl_coef": 0.1, "lr": 0.01, "epochs": 1}
    spec = {"llm": LLM, "preference": {"batch_size": 2, "grad_accum": 1, "warmup_ratio": 0.0, "checkpoint_every": 0},
            "method": block, "domain": "movie", "prompt": "sid"}
    out = preference.run_preference("rere", tiny_model_dir, start, paths["samples"], paths["items"], paths["selection"],
                                    None, spec, 0, tmp_path / "grpo")
    before, after = (safetensors.torch.load_file(p / "adapter_model.safetensors") for p in (start, out))
    assert before.keys() == after.keys()
    delta = [k for k in before if "trainable_tokens_delta" in k]
    assert delta and any(not torch.equal(before[k], after[k]) for k in delta)
    log = pd.read_parquet(out / "train_log.parquet")
    assert log["kl"].iloc[0] == pytest.approx(0.0, abs=1e-6) and np.isfinite(log["loss"]).all()
