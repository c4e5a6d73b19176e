"""The table of evaluation protocols (workflow/protocol_table.py, computed by
workflow/llm/protocols.py): its facts, and that each protocol emits the metrics and columns it
declares."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workflow import runs
from workflow.config import read_schema
from workflow.llm import evaluate, grounding, protocols

LLM = {"device": "cpu", "dtype": "float32", "max_title_tokens": 24, "max_prompt_tokens": 512}
TITLES = {"alien": "Alien (1979)", "heat": "Heat (1995)", "fargo": "Fargo (1996)", "up": "Up (2009)",
          "jaws": "Jaws (1975)", "casino": "Casino (1995)"}
ITEMS = pd.DataFrame({"item_id": list(TITLES), "title": list(TITLES.values())})
SAMPLES = pd.DataFrame([
    {"sample_id": "s0", "split": "test", "user_id": "u0", "history": ["up", "jaws"], "target": "heat",
     "candidates": ["alien", "heat", "fargo"]},
    {"sample_id": "s1", "split": "test", "user_id": "u1", "history": ["casino"], "target": "fargo",
     "candidates": ["fargo", "up", "jaws"]},
    {"sample_id": "s2", "split": "test", "user_id": "u0", "history": ["alien", "heat"], "target": "jaws",
     "candidates": ["casino", "jaws", "up"]},
])


def test_the_table_says_what_the_prompts_support():
    assert set(runs.PROMPT_PROTOCOLS) == set(runs.PROMPTS)
    assert set(protocols.supported("candidate")) == {"likelihood", "generation", "generation_constrained",
                                                     "likelihood_reversed"}
    assert set(protocols.supported("open")) == {"likelihood", "grounded", "catalogue"}
    for prompt in runs.ID_PROMPTS:  # items shown by code ID: scored over the candidates or the whole catalogue
        assert set(protocols.supported(prompt)) == {"likelihood", "catalogue"}
    # the schema's prompts are runs.py's, and every ID prompt has its embedding sources with a default
    schema = read_schema()
    assert schema["$defs"]["prompt"]["enum"] == list(runs.PROMPTS)
    # ... and the protocols a config may list are the table's requestable ones, under every key that lists them
    requestable = {"likelihood", "generation", "grounded", "generation_constrained", "likelihood_reversed",
                   "catalogue"}
    assert set(schema["$defs"]["protocol"]["enum"]) == requestable
    keys = [schema["properties"]["evaluation"]["properties"]["protocols"]["items"],
            schema["properties"]["tuning"]["properties"]["protocol"],
            schema["properties"]["studies"]["additionalProperties"]["properties"]["protocols"]["items"]]
    assert all(key["$ref"] == "#/$defs/protocol" for key in keys)
    sources = schema["properties"]["semantic_ids"]["properties"]["embeddings"]["properties"]
    assert list(sources) == list(runs.ID_PROMPTS) and all("default" in s for s in sources.values())
    assert runs.parse("sft-open").protocols(["generation", "grounded", "likelihood"]) == ["grounded", "likelihood"]
    with pytest.raises(ValueError, match="the open prompt supports likelihood, grounded"):
        protocols.resolve(["generation"], "open")
    assert protocols.resolve(["likelihood_reversed"], "candidate") == ["likelihood", "likelihood_reversed"]


def test_popularity_and_headline_facts():
    assert {p: protocols.popularity_protocol(p) for p in protocols.PROTOCOLS} == {
        "likelihood": "likelihood", "likelihood_norm": "likelihood", "likelihood_reversed": "likelihood",
        "grounded": "full_ranking", "full_ranking": "full_ranking", "generation": None,
        "generation_constrained": None, "catalogue": "full_ranking"}
    assert protocols.popularity_protocol("unknown") is None
    assert protocols.headlines() == {"likelihood": ("hr@1", "mrr", "auc"), "likelihood_norm": ("hr@1", "mrr", "auc"),
                                     "grounded": ("hr@10", "ndcg@10"), "generation_constrained": ("hit",),
                                     "likelihood_reversed": ("hr@1", "top_changed"),
                                     "catalogue": ("hr@10", "ndcg@10")}
    for name, protocol in protocols.PROTOCOLS.items():
        assert set(protocol.headline) <= set(protocol.metrics), name
        assert set(protocol.columns) <= set(protocols.PREDICTIONS_SCHEMA.names), name
        assert set(protocol.runs_with) <= set(protocols.PROTOCOLS), name
        assert set(protocol.reads) <= set(protocols.INPUTS), name
        # a protocol a prompt may request has a function (the others are reported by another's)
        assert (name in protocols.RUNS) == bool(protocol.prompts), name
    assert protocols.reads(["likelihood", "grounded"]) == ("title_embeddings",)
    assert protocols.reads(["likelihood", "generation"]) == ()


@pytest.mark.parametrize("prompt", ["candidate", "open"])
def test_each_protocol_emits_what_it_declares(tiny_model_dir, prompt):
    model, tokenizer = evaluate.load_for_evaluation(tiny_model_dir, device="cpu", dtype="float32")
    requested = list(protocols.supported(prompt))
    embeddings = grounding.embed_texts(model, tokenizer, ITEMS["title"].tolist(), batch_size=4)
    pred, values = evaluate.evaluate(model, tokenizer, SAMPLES, ITEMS, protocols=requested, domain="movie", llm=LLM,
                                     evaluation={"max_new_tokens": 4, "batch_size": 2, "catalogue_beams": 4,
                                                 "protocols": requested},
                                     title_embeddings=embeddings, prompt=prompt)
    reported = [p for p in protocols.PROTOCOLS if p in values]
    assert list(values) == reported  # in the table's order
    for name, per_metric in values.items():
        assert tuple(per_metric) == protocols.PROTOCOLS[name].metrics, name
        assert all(len(v) == len(SAMPLES) for v in per_metric.values())
    declared = {"sample_id", "split", "user_id", "target", "candidates"}
    declared |= {c for name in values for c in protocols.PROTOCOLS[name].columns}
    written = {c for c in pred.columns if pred[c].notna().any()}
    assert written <= declared and list(pred.columns) == protocols.PREDICTIONS_SCHEMA.names
    assert np.isfinite(np.stack(pred["candidate_logprob"])).all()
