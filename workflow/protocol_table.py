"""The evaluation protocols' table as plain data: per protocol the prompts it supports, the metrics it
emits, its headline metrics (summary.md's paired differences), the popularity ranking it is read
against, what it reads of the evaluation's shared pass and which stored inputs it needs. No model
code: workflow/runs.py, the rules, workflow/summary.py and workflow/study.py read it without the
LLM layer, whose functions (workflow/llm/protocols.py `RUNS`) register against these names.
Adding a protocol: its row here, its function in workflow/llm/protocols.py's `RUNS` (and its name in
config/schema.yaml's enum).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from workflow import metrics


@dataclass(frozen=True)
class Protocol:
    prompts: tuple[str, ...] = ()    # the run prompts it may be requested under (evaluation.protocols)
    metrics: tuple[str, ...] = ()    # the metrics it emits
    headline: tuple[str, ...] = ()   # summary.md's paired differences
    popularity: str | None = None    # the popularity baseline's protocol ranking the same items
    scores: bool = False             # reads the shared pass's forward candidate scores
    decodes: str | None = None       # decodes the decoded subset: the shared pass's "free" or "constrained"
                                     # answers, or its own "catalogue" beam search
    runs_with: tuple[str, ...] = ()  # protocols run (and reported) whenever it is
    columns: tuple[str, ...] = ()    # the predictions.parquet columns it writes (PREDICTIONS_SCHEMA)
    reads: tuple[str, ...] = ()      # stored inputs of the evaluation beyond model and samples (INPUTS)


# The stored inputs a protocol may read (`Protocol.reads`), each the dataset's table
# {results}/{dataset}/llm/{name}.parquet: the evaluation rule's input of that name and its
# --name command-line argument (workflow/dag.py evaluation inputs, workflow/llm/evaluate.py).
INPUTS = ("title_embeddings",)

ANSWER_ERRORS = ("several", "history", "outside", "nothing")  # generation's answer categories besides valid
CANDIDATE_METRICS = (*(f"hr@{k}" for k in metrics.CANDIDATE_KS["hr"]),
                     *(f"ndcg@{k}" for k in metrics.CANDIDATE_KS["ndcg"]), "mrr", "auc")
FULL_RANKING_METRICS = (*(f"hr@{k}" for k in metrics.FULL_RANKING_KS), *(f"ndcg@{k}" for k in metrics.FULL_RANKING_KS))

# The order is the order protocols run in and their rows in the metrics tables (and summary.md's
# paired-differences sections).
PROTOCOLS: dict[str, Protocol] = {
    "likelihood": Protocol(prompts=("candidate", "open", "sid", "cid"), metrics=CANDIDATE_METRICS,
                           headline=("hr@1", "mrr", "auc"), popularity="likelihood", scores=True,
                           columns=("candidate_logprob", "candidate_tokens", "target_rank", "target_rank_norm")),
    "likelihood_norm": Protocol(metrics=CANDIDATE_METRICS, headline=("hr@1", "mrr", "auc"),
                                popularity="likelihood"),  # the likelihood function reports it
    "grounded": Protocol(prompts=("open",), metrics=FULL_RANKING_METRICS, headline=("hr@10", "ndcg@10"),
                         popularity="full_ranking", decodes="free",
                         columns=("open_generated", "grounded_top", "grounded_target_rank"),
                         reads=("title_embeddings",)),
    # the candidates' order does not move popularity; read against the forward order, scored with it
    "likelihood_reversed": Protocol(prompts=("candidate",),
                                    metrics=(*CANDIDATE_METRICS, "top_changed"), headline=("hr@1", "top_changed"),
                                    popularity="likelihood", runs_with=("likelihood",),
                                    columns=("candidate_logprob_reversed", "target_rank_reversed")),
    "generation": Protocol(prompts=("candidate",), metrics=("valid", "hit", *ANSWER_ERRORS),
                           decodes="free", columns=("generated", "matched_item", "answer_category")),
    "generation_constrained": Protocol(prompts=("candidate",), metrics=("valid", "hit"),
                                       headline=("hit",), decodes="constrained",
                                       columns=("constrained_generated", "constrained_item")),
    "catalogue": Protocol(prompts=("open", "sid", "cid"), metrics=(*FULL_RANKING_METRICS, "invalid", "duplicate"),
                          headline=("hr@10", "ndcg@10"), popularity="full_ranking", decodes="catalogue",
                          columns=("catalogue_top", "catalogue_target_rank")),
    "full_ranking": Protocol(metrics=FULL_RANKING_METRICS, popularity="full_ranking"),  # baselines, SASRec
}


def requestable() -> list[str]:
    """The protocols a config may list (`evaluation.protocols`, a study's, the tuning's): those some
    prompt supports; likelihood_norm and full_ranking come with likelihood and the baselines."""
    return [name for name, p in PROTOCOLS.items() if p.prompts]


def supported(prompt: str) -> tuple[str, ...]:
    """The protocols a run with this prompt may request, in the table's order."""
    return tuple(name for name, p in PROTOCOLS.items() if prompt in p.prompts)


def popularity_protocol(protocol: str) -> str | None:
    """The popularity baseline's protocol a row of `protocol` is read against (None: none)."""
    return PROTOCOLS[protocol].popularity if protocol in PROTOCOLS else None


def headlines() -> dict[str, tuple[str, ...]]:
    """protocol -> its headline metrics, for the protocols that have them, in the table's order."""
    return {name: p.headline for name, p in PROTOCOLS.items() if p.headline}


def reads(protocols: Sequence[str]) -> tuple[str, ...]:
    """The stored inputs (`INPUTS`) that evaluating `protocols` reads, in INPUTS' order."""
    wanted = {need for p in protocols for need in PROTOCOLS[p].reads}
    return tuple(need for need in INPUTS if need in wanted)


def resolve(requested: Sequence[str], prompt: str) -> list[str]:
    """The protocols to run for `requested` under `prompt`, with those they run with, in the table's
    order; a protocol the prompt does not support is an error."""
    unsupported = [p for p in requested if p not in supported(prompt)]
    if unsupported:
        raise ValueError(f"protocol(s) {unsupported} need the other prompt than {prompt!r} "
                         f"(the {prompt} prompt supports {', '.join(supported(prompt))})")
    wanted = set(requested) | {w for p in requested for w in PROTOCOLS[p].runs_with}
    return [name for name in PROTOCOLS if name in wanted]
