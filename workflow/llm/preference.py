"""Preference optimisation from the SFT adapter: DMPO, S-DPO, DynamicPO (DESIGN section 5) and the
newest objectives, LPO4Rec, NAPO, GRPO over the candidates and SPRec's rounds (workflow/llm/losses.py).

The policy starts as the SFT adapter and is trained further; the reference is the frozen SFT model
(LPO4Rec and NAPO are reference-free: they read no reference table unless their negatives are ranked
by it; NAPO reads the SASRec surrogate instead, its auxiliary recommender, --surrogate).
Because the reference never changes, its log-probs are scored once per (dataset, selection) by
`workflow.llm.reference` (every candidate, no gradients) and read here from that table (--reference):
no second model in memory, no reference that silently equals the policy (the defect of the DMPO
authors' code), and one reference pass shared by every method and every k of the collapse study.

Negatives are k of the sample's own candidates (never the target), by strategy:
`random` (seeded per run), `hardest` (highest reference log-prob), `all` (k = n - 1), `self` (the
reference's top wrong candidate), `tail` / `head` (by train-split popularity) or `head_gumbel`
(LPO4Rec's: among the candidates that are head items).
Each training step scores the 1 + k answers of a sample with the shared-prefix scorer (prompt
encoded once) and applies one objective of `workflow.llm.losses`, plus an optional SFT term
gamma * NLL(y_w) (token mean of the target answer).

    python -m workflow.llm.preference --method dmpo --model-dir results/models/base \
        --adapter .../sft/random/adapter --samples ... --items ... --selection ... \
        --reference .../sft/random/reference_logprobs.parquet \
        --spec '{"llm": {...}, "preference": {...}, "method": {...}, "domain": "movie"}' \
        --seed 42 --threads 2 --out .../dmpo/random/adapter
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from workflow import cli
from workflow.config import validate_block
from workflow.llm import losses, stage, train
from workflow.llm.data import preference_examples
from workflow.methods import METHODS as DECLARED, NEGATIVES, OBJECTIVE_SETTINGS
from workflow.runs import PREFERENCE, RANKED_STRATEGIES, REFERENCE_FREE, reads_reference

log = logging.getLogger(__name__)

METHODS = PREFERENCE  # workflow/methods.py declares each
# The negative strategies by what they read (workflow/methods.py NEGATIVES declares each)
WEIGHTED = tuple(name for name, negatives in NEGATIVES.items() if negatives.popularity)  # by item popularity
READS_POPULARITY = tuple(name for name, negatives in NEGATIVES.items() if negatives.popularity or negatives.head)


def settings(method: str, spec: dict[str, Any]) -> dict[str, Any]:
    """{llm, cfg (training settings = preference block + the method's block), domain, prompt,
    budget}, validated."""
    from workflow.config import stage_settings

    if method not in METHODS:
        raise ValueError(f"unknown preference method {method!r} (known: {', '.join(METHODS)})")
    s = stage_settings(spec, {"llm": "llm", "preference": "preference", "method": method})
    s["cfg"] = {**s.pop("preference"), **s.pop("method")}
    return s


def read_reference(path: str | Path, examples: Sequence[dict[str, Any]]) -> list[np.ndarray]:
    """Per example, log pi_ref(y|x) of its candidates (in its candidate order) from the table of
    `workflow.llm.reference`; the table must cover every example with the same candidates."""
    table = pd.read_parquet(path)
    missing = [c for c in ("sample_id", "candidates", "candidate_logprob") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (not a reference log-prob table)")
    rows = {str(s): (list(map(str, c)), np.asarray(lp, dtype=np.float32))
            for s, c, lp in zip(table["sample_id"], table["candidates"], table["candidate_logprob"])}
    out = []
    for example in examples:
        found = rows.get(example["sample_id"])
        if found is None:
            raise ValueError(f"{path}: no reference log-probs for sample '{example['sample_id']}' "
                             "(the table was scored for another selection: rerun its rule)")
        if found[0] != example["candidates"]:
            raise ValueError(f"{path}: sample '{example['sample_id']}' has other candidates than the samples file "
                             "(stale reference table: rerun its rule)")
        out.append(found[1])
    return out


def choose_negatives(n_candidates: int, target: int, k: int, strategy: str, rng: np.random.Generator,
                     reference: np.ndarray | None = None, popularity: np.ndarray | None = None,
                     head: np.ndarray | None = None) -> list[int]:
    """Indices of k negatives among a sample's candidates (never the target).

    `random`: k uniformly (seeded rng); `hardest`: the k highest reference log-probs; `all`: every
    non-target candidate; `self` (SPRec): the reference's top-ranked wrong candidate, k must be 1 (=
    `hardest` with k = 1: the reference is the round's starting model); `tail` (LPO4Rec): k drawn
    without replacement with probability proportional to 1 / (1 + count), so the least popular
    candidates are preferred; `head`: proportional to 1 + count (the most popular preferred, closer to
    the LPO4Rec authors' code, which draws its negatives among head items). `popularity` holds the
    training interaction count of each candidate (in candidate order). `head_gumbel` (LPO4Rec's
    adaptive negatives, the authors' `lpo_loss_gumbel`): k uniformly among the candidates that are
    head items (`head`, a bool per candidate: `head_items`), the rest uniformly among the others when
    fewer than k are. The authors draw by Gumbel top-k over the model's softmaxed scores, keys
    p_j + Gumbel noise with p_j in [0, 1], so their draw is within a factor e of uniform; an LLM's
    probability of a whole title is near 0, which makes that Gumbel top-k uniform here."""
    others = [j for j in range(n_candidates) if j != target]
    if strategy == "all":
        return others
    if k > len(others):
        raise ValueError(f"k={k} negatives asked for, but a sample has only {len(others)} non-target candidates")
    if strategy == "random":
        return sorted(rng.choice(others, size=k, replace=False).tolist())
    if strategy in RANKED_STRATEGIES:
        if strategy == "self" and k != 1:
            raise ValueError(f"strategy 'self' (SPRec) takes exactly one negative, got k={k}")
        if reference is None:
            raise ValueError(f"strategy '{strategy}' needs the reference log-probs of every candidate")
        # stable sort on -logprob: ties keep candidate order, so the choice is deterministic
        order = sorted(others, key=lambda j: (-float(reference[j]), j))
        return order[:k]
    if strategy == "head_gumbel":
        if head is None:
            raise ValueError("strategy 'head_gumbel' needs which candidates are head items")
        popular = [j for j in others if head[j]]
        picked = rng.choice(popular, size=min(k, len(popular)), replace=False).tolist() if popular else []
        rest = [j for j in others if not head[j]]
        picked += rng.choice(rest, size=k - len(picked), replace=False).tolist() if len(picked) < k else []
        return sorted(picked)
    if strategy in WEIGHTED:
        if popularity is None:
            raise ValueError(f"strategy '{strategy}' needs the popularity of every candidate")
        counts = np.asarray(popularity, dtype=np.float64)[others]
        if (counts < 0).any():
            raise ValueError("popularity counts must be >= 0")
        weights = 1.0 / (1.0 + counts) if strategy == "tail" else 1.0 + counts
        return sorted(rng.choice(others, size=k, replace=False, p=weights / weights.sum()).tolist())
    raise ValueError(f"unknown negative strategy {strategy!r} (known: {', '.join(NEGATIVES)})")


def item_popularity(samples: pd.DataFrame) -> dict[str, int]:
    """Item id -> occurrences in the train split's histories and targets of a samples table (every
    train sample counted, so an item early in a user's sequence counts once per later sample that
    still holds it in its history: a popularity rank, not an interaction count)."""
    train_rows = samples[samples["split"] == "train"] if "split" in samples.columns else samples
    counts: dict[str, int] = {}
    for history, target in zip(train_rows["history"], train_rows["target"]):
        for item in [*map(str, history), str(target)]:
            counts[item] = counts.get(item, 0) + 1
    return counts


def head_items(popularity: dict[str, int], share: float) -> set[str]:
    """The head items: the int(share n) most frequent of the n items `popularity` counts (ties to the
    smaller item id); every other item, counted or not, is a tail item. The LPO4Rec authors'
    `notail_item(train, 0.2)`, Counter.most_common(int(0.8 n)), over the training sequences."""
    ranked = sorted(popularity, key=lambda item: (-popularity[item], item))
    return set(ranked[:int(share * len(ranked))])


def with_negatives(examples: list[dict[str, Any]], k: int, strategy: str, seed: int,
                   full_reference: list[np.ndarray] | None = None,
                   popularity: dict[str, int] | None = None, head: set[str] | None = None) -> list[dict[str, Any]]:
    """Per example: answers reordered as [target, negatives...] (seeded; `hardest` and `self` read the
    reference log-probs of all candidates, `tail` and `head` the item popularity, `head_gumbel` the
    `head` items). Without
    `popularity` (the trainer does not pass it yet), `tail` and `head` count each item's occurrences as
    the target of the given examples (the training targets of the run's selection)."""
    rng = np.random.default_rng([seed, 0x5EED])
    if strategy in WEIGHTED and popularity is None:
        popularity = {}
        for example in examples:
            target = example["candidates"][example["target"]]
            popularity[target] = popularity.get(target, 0) + 1
        log.warning("negative strategy %s: no item popularity given, counting the %d training targets instead",
                    strategy, len(examples))
    chosen = []
    for i, example in enumerate(examples):
        ref = None if full_reference is None else full_reference[i]
        pop = None if popularity is None else np.array([popularity.get(str(c), 0) for c in example["candidates"]])
        is_head = None if head is None else np.array([str(c) in head for c in example["candidates"]])
        order = [example["target"],
                 *choose_negatives(len(example["answers"]), example["target"], k, strategy, rng, ref, pop, is_head)]
        chosen.append({"sample_id": example.get("sample_id"), "prompt": example["prompt"],
                       "answers": [example["answers"][j] for j in order],
                       "order": order, "items": [example["candidates"][j] for j in order]})
    return chosen


def collate(examples: Sequence[dict[str, Any]], share_ratio: float | None = None):
    """(prompts, answers, reference log-probs [B, C] or None for a reference-free run, extra): for
    examples carrying NAPO's auxiliary scores, `napo_inputs` (with `share_ratio`, its in-batch
    negative sharing); for examples with a tail flag (LPO4Rec's authors' form), {"tail": [B]}; else None."""
    reference = [e.get("reference") for e in examples]
    extra = (napo_inputs(examples, share_ratio) if "confidence" in examples[0]
             else {"tail": torch.tensor([e["tail"] for e in examples])} if "tail" in examples[0] else None)
    return ([e["prompt"] for e in examples], [e["answers"] for e in examples],
            None if reference[0] is None else torch.stack(reference), extra)


def napo_inputs(examples: Sequence[dict[str, Any]], share_ratio: float | None) -> dict[str, torch.Tensor | None]:
    """NAPO's per-batch inputs, all model-free: `confidence` [B, k], the auxiliary recommender's
    score of each negative; `shareable` [B, B*k] (None without sharing): row i, column j*k + m is
    instance j's m-th negative, shared with i when j is among the floor(share_ratio (B - 1)) other
    instances most similar to i (dot product of the SASRec sequence representations; ties to the
    earlier instance) and the item is not i's own target (a false negative by construction; the
    authors' code does not check this). The authors' `neg_accept_ratio` and `seq_logits` similarity."""
    k = len(examples[0]["items"]) - 1
    if any(len(e["items"]) - 1 != k for e in examples):
        raise ValueError("napo: every instance of a batch needs the same number of negatives")
    confidence = torch.tensor(np.stack([e["confidence"] for e in examples]), dtype=torch.float32)
    if share_ratio is None:
        return {"confidence": confidence, "shareable": None}
    B = len(examples)
    reprs = np.stack([e["repr"] for e in examples]).astype(np.float64)
    similarity = reprs @ reprs.T
    n_take = int(share_ratio * (B - 1))
    shareable = torch.zeros(B, B * k, dtype=torch.bool)
    for i, mine in enumerate(examples):
        others = sorted((j for j in range(B) if j != i), key=lambda j: (-similarity[i, j], j))[:n_take]
        for j in others:
            for m, item in enumerate(examples[j]["items"][1:]):
                shareable[i, j * k + m] = item != mine["items"][0]
    return {"confidence": confidence, "shareable": shareable}


@functools.lru_cache(maxsize=None)
def block_defaults(method: str) -> dict[str, Any]:
    return validate_block(method, {})


def with_defaults(method: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` over config/schema.yaml's defaults of the method's block: the schema holds every default,
    so the code below indexes the settings and writes none of its own."""
    return {**block_defaults(method), **cfg}


def objective_of(method: str, cfg: dict[str, Any]) -> str:
    """The OBJECTIVES key a run trains: its method's, or the one its block's `form` names (methods.py
    Method.forms: lpo4rec's authors' code). An sprec round's is DPO on the reference's top-ranked wrong
    candidate, strategy self; the rules chain the rounds (--adapter and --reference are the last round's)."""
    declared = DECLARED[method]
    return dict(declared.forms).get(cfg.get("form"), declared.objective)


def weighs_tail(method: str, cfg: dict[str, Any]) -> bool:
    """Whether the run's objective is the authors' LPO4Rec, which reweights the samples whose target is
    a tail item (it reads the item popularity, each sample's tail flag and the target's NLL)."""
    return objective_of(method, cfg) == "lpo4rec_authors"


def make_loss_fn(method: str, cfg: dict[str, Any], scorer=None, state: dict[str, torch.Tensor] | None = None):
    """loss_fn(model, batch) for the shared training loop: the objective, plus gamma * NLL(y_w).
    `scorer(model, prompt_ids, answer_ids) -> (sum [B, C], n [B, C])` defaults to the shared-prefix
    `candidate_logprobs`; a plug-in may pass its own (iLoRA's embeddings hook, or the concatenated
    reference path that bench/bench_preference.py compares against). `state`: NAPO's running
    average of its negatives' confidence (`napo_state`), updated in place by every call (the
    trainer keeps it in the checkpoint: `train.Hooks.state`)."""
    from workflow.llm.scoring import candidate_logprobs

    scorer = scorer or candidate_logprobs

    declared = DECLARED[method]
    cfg = with_defaults(method, cfg)
    name = objective_of(method, cfg)
    objective = losses.OBJECTIVES[name]
    kwargs = {argument: kind(cfg[key]) for argument, (key, kind) in OBJECTIVE_SETTINGS[name].items()}
    authors_lpo = weighs_tail(method, cfg)
    gamma = float(cfg["gamma"])
    if declared.state and state is None:
        state = napo_state()

    def loss_fn(model, batch):
        prompt_ids, answer_ids, reference = batch[:3]
        policy, n_tokens = scorer(model, prompt_ids, answer_ids)
        policy = policy.float()
        if reference is not None:  # None: a reference-free run (lpo4rec, napo)
            reference = reference.to(policy.device)
        extra, measured = napo_arguments(policy, batch[3], cfg, state) if declared.state else ({}, {})
        if authors_lpo:  # their cross-entropy: the target's token-mean NLL, SFT's loss
            extra = {"nll": -policy[:, 0] / n_tokens[:, 0], "tail": batch[3]["tail"].to(policy.device)}
        ref_chosen, ref_rejected = (None, None) if reference is None else (reference[:, 0], reference[:, 1:])
        loss, diagnostics = objective(policy[:, 0], policy[:, 1:], ref_chosen, ref_rejected, **kwargs, **extra)
        diagnostics.update(measured)
        if gamma:
            nll = -(policy[:, 0] / n_tokens[:, 0]).mean()
            loss = loss + gamma * nll
            diagnostics["nll_chosen"] = float(nll.detach())
        processed = sum(len(p) + sum(len(a) - 1 for a in answers) for p, answers in zip(prompt_ids, answer_ids))
        return loss, len(prompt_ids), {**diagnostics, "tokens": processed}

    return loss_fn


def shares_negatives(method: str, cfg: dict[str, Any]) -> bool:
    """Whether the run uses NAPO's in-batch negative sharing (`napo.share_negatives`, the schema's
    default on): its collate builds the sharing mask and its loss reads it."""
    return DECLARED[method].shares_negatives and bool(with_defaults(method, cfg)["share_negatives"])


def napo_state() -> dict[str, torch.Tensor]:
    """NAPO's running state: M_bar, the moving average of the batches' mean confidence (from 0 as the
    authors')."""
    return {"confidence_average": torch.zeros(())}


def napo_arguments(policy: torch.Tensor, inputs: dict[str, torch.Tensor | None] | None, cfg: dict[str, Any],
                   state: dict[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, float]]:
    """The NAPO objective's batch arguments: the shared negatives (`shared_negatives`) and the margin
    gamma = margin (1 - alpha (M - M_bar)), M the mean confidence over every instance's negatives, own
    and shared (the authors' M_local), M_bar updated with it first (`losses.moving_average`); and the
    diagnostics M (`confidence`) and M_bar (`confidence_average`). Updates `state` in place. The
    confidences are model-free, so M and the margin carry no gradient."""
    if inputs is None:
        raise ValueError("napo: the batch carries no confidence scores (collate examples with 'confidence')")
    confidence, shareable = inputs["confidence"], inputs["shareable"]
    weights, scores, extra = torch.ones_like(confidence), confidence, {}
    if shareable is not None:
        B, k = confidence.shape
        extra = shared_negatives(policy, shareable)
        weights = torch.cat([weights, shareable.float()], dim=1)
        scores = torch.cat([confidence, confidence.reshape(1, B * k).expand(B, B * k)], dim=1)
    batch_mean = float((weights * scores).sum() / weights.sum())
    average = losses.moving_average(float(state["confidence_average"]), batch_mean, float(cfg["momentum"]))
    state["confidence_average"].fill_(average)
    margin = losses.napo_margin(batch_mean, average, float(cfg["margin"]), float(cfg["alpha"]))
    return {"margin": margin, **extra}, {"confidence": batch_mean, "confidence_average": average}


def shared_negatives(policy: torch.Tensor, shareable: torch.Tensor) -> dict[str, torch.Tensor]:
    """NAPO's in-batch negative sharing (reuse the log-probs the batch has already computed for the
    other instances' negatives; no extra forward pass): every row gets all B*k negatives of the
    micro-batch as they were scored, under their own instance's prompt, masked by `napo_inputs`'
    `shareable`. Their gradient flows through the instance that scored them."""
    B, k = policy.shape[0], policy.shape[1] - 1
    return {"shared_policy_rejected": policy[:, 1:].reshape(1, B * k).expand(B, B * k),
            "shared_mask": shareable.to(policy.device)}


def napo_scores(examples: Sequence[dict[str, Any]], surrogate_dir: str | Path) -> None:
    """NAPO's auxiliary recommender, the SASRec surrogate: per chosen example, in place, `repr` (its
    sequence representation, the similarity the sharing ranks users by) and `confidence` [k] (the
    SASRec score <repr, item embedding> of each negative, as the authors' scores_of_sorted_neg_items)."""
    from workflow.llm.llara import read_item_vectors, read_sequence_vectors

    row_of, vectors = read_item_vectors(surrogate_dir)
    reprs = read_sequence_vectors(surrogate_dir, [e["sample_id"] for e in examples])
    items = vectors.numpy()
    for example, r in zip(examples, reprs):
        missing = [i for i in example["items"][1:] if i not in row_of]
        if missing:
            raise ValueError(f"{surrogate_dir}: no SASRec embedding of item '{missing[0]}'")
        example["repr"] = r
        example["confidence"] = items[[row_of[i] for i in example["items"][1:]]] @ r


def policy_method(method: str, cfg: dict[str, Any], llm: dict[str, Any], domain: str, prompt: str,
                  adapter: str | Path, reference_path: str | Path, samples_path: str | Path,
                  seed: int, negatives_path: str | Path | None = None,
                  surrogate_dir: str | Path | None = None) -> stage.Method:
    """A preference method as a training stage: the sft adapter loaded trainable (the policy's
    start), examples with their negatives and reference log-probs, the method's objective.
    `negatives_path`: another model's log-prob table that `hardest` and `self` rank the candidates
    by (SPRec with its SFT phase: the previous round's); default the reference's. `surrogate_dir`:
    the SASRec surrogate's tables, NAPO's auxiliary recommender (`napo_scores`)."""
    from peft import PeftModel

    if DECLARED[method].online_reference:  # rere: its group the policy's beam over the catalogue
        return catalogue_method(method, cfg, llm, domain, prompt, adapter)

    def attach(model, tokenizer):
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)

    def plan(loaded: stage.Loaded) -> stage.Plan:
        examples = preference_examples(loaded.samples, loaded.items, loaded.tokenizer, domain, llm, prompt)
        # every candidate: `hardest` and `self` rank them; none for a reference-free run
        full = None if reference_path is None else read_reference(reference_path, examples)
        ranking = full if negatives_path is None else read_reference(negatives_path, examples)
        authors_lpo = weighs_tail(method, cfg)
        popularity = (item_popularity(pd.read_parquet(samples_path, columns=["split", "history", "target"]))
                      if cfg["strategy"] in READS_POPULARITY or authors_lpo
                      else None)  # the whole train split's, not the run's
        head = None if popularity is None or "head_share" not in cfg else head_items(popularity, cfg["head_share"])
        chosen = with_negatives(examples, cfg["k"], cfg["strategy"], seed, ranking, popularity, head)
        for example, ref in zip(chosen, full or []):
            example["reference"] = torch.tensor(ref[example["order"]], dtype=torch.float32)
        if authors_lpo:  # the authors reweight the samples whose target is a tail item
            for example in chosen:
                example["tail"] = int(example["items"][0] not in head)
        state = None
        if DECLARED[method].surrogate:  # the auxiliary recommender's scores, the running state
            napo_scores(chosen, surrogate_dir)
            state = napo_state()
        log.info("%s on %d samples, %s prompt, %d negatives each (%s), beta %.3g", method, len(chosen), prompt,
                 len(chosen[0]["answers"]) - 1, cfg["strategy"], cfg["beta"])
        share_ratio = float(cfg["share_ratio"]) if shares_negatives(method, cfg) else None
        return stage.Plan(chosen, functools.partial(collate, share_ratio=share_ratio),
                          make_loss_fn(method, cfg, state=state), hooks=train.Hooks(state=state),
                          fingerprint={"adapter": str(adapter), "method": method},
                          config={"reference_adapter": str(adapter),
                                  "reference_logprobs": None if reference_path is None else str(reference_path),
                                  **({} if negatives_path is None else {"negatives_ranked_by": str(negatives_path)}),
                                  **({"auxiliary_recommender": str(surrogate_dir)}
                                     if DECLARED[method].surrogate else {})})

    return stage.Method(method, cfg, attach, plan)


def catalogue_method(method: str, cfg: dict[str, Any], llm: dict[str, Any], domain: str, prompt: str,
                     adapter: str | Path) -> stage.Method:
    """GRPO over the policy's beam across the catalogue (workflow/llm/catalogue_rl.py): the sft
    adapter trained, and again frozen as the online reference."""
    from workflow.llm import catalogue_rl
    from workflow.llm.inference import pad_id
    from workflow.llm.catalogue import catalogue_answers

    cfg = with_defaults(method, cfg)

    def plan(loaded: stage.Loaded) -> stage.Plan:
        examples = preference_examples(loaded.samples, loaded.items, loaded.tokenizer, domain, llm, prompt)
        item_ids = loaded.items["item_id"].astype(str).tolist()
        answers = catalogue_answers(loaded.tokenizer, loaded.items["title"].astype(str), llm["max_title_tokens"])
        chosen = catalogue_rl.catalogue_examples(examples, item_ids)
        log.info("%s on %d samples, %s prompt, groups of %d by beam search over %d catalogue items", method,
                 len(chosen), prompt, cfg["group_size"], len(item_ids))
        return stage.Plan(chosen, catalogue_rl.collate,
                          catalogue_rl.make_loss_fn(cfg, answers, pad_id(loaded.tokenizer)),
                          save_weights=catalogue_rl.save_policy(loaded.model),
                          fingerprint={"adapter": str(adapter), "method": method},
                          config={"reference_adapter": str(adapter), "reference": "online"})

    return stage.Method(method, cfg, lambda model, tokenizer: catalogue_rl.attach_with_reference(model, adapter), plan)


def run_preference(method: str, model_dir: str | Path, adapter: str | Path, samples_path: str | Path,
                   items_path: str | Path, selection_path: str | Path, reference_path: str | Path,
                   spec: dict[str, Any], seed: int, out: str | Path, negatives_path: str | Path | None = None,
                   surrogate_dir: str | Path | None = None) -> Path:
    s = settings(method, spec)
    llm, cfg, domain = s["llm"], s["cfg"], s["domain"]
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter}: no adapter_config.json (train the sft adapter first)")
    reads_table = not DECLARED[method].online_reference and reads_reference(method, cfg["strategy"])
    if reference_path is None and reads_table:
        raise ValueError(f"{method} (negative strategy {cfg['strategy']}) reads the reference log-probs: pass "
                         f"--reference (only the reference-free {' and '.join(REFERENCE_FREE)} run without, "
                         f"and only with negatives the reference does not rank: not {' or '.join(RANKED_STRATEGIES)})")
    if negatives_path is not None and cfg["strategy"] not in RANKED_STRATEGIES:
        raise ValueError(f"--negatives ranks the candidates for strategy {' or '.join(RANKED_STRATEGIES)}; "
                         f"{method} has strategy {cfg['strategy']}")
    if DECLARED[method].surrogate and surrogate_dir is None:
        raise ValueError("napo scores its negatives' confidence with the SASRec surrogate: pass --surrogate "
                         "(the folder of the surrogate stage's item_embeddings.parquet and sequence_repr.parquet)")
    policy = policy_method(method, cfg, llm, domain, s["prompt"], adapter, reference_path, samples_path, seed,
                           negatives_path, surrogate_dir)
    train_log = stage.run_stage(policy, model_dir=model_dir, samples_path=samples_path, items_path=items_path,
                                selection_path=selection_path, llm=llm, seed=seed, out=out,
                                config={method: cfg, "domain": domain, "prompt": s["prompt"], "budget": s["budget"]})
    for column in ("reward_accuracy", "beam_hit_rate"):
        if column in train_log.columns:
            log.info("%s: %s %.3f at the last step", method, column.replace("_", " "), train_log[column].iloc[-1])
    return Path(out)


def main(argv=None) -> int:
    p = cli.parser("Preference optimisation (DMPO, S-DPO, DynamicPO, LPO4Rec, NAPO, GRPO, SPRec) from the SFT adapter.")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--adapter", required=True, help="the starting policy and the frozen reference: the SFT adapter "
                                                    "(an SPRec round after the first: the previous round's)")
    p.add_argument("--samples", required=True)
    p.add_argument("--items", required=True)
    p.add_argument("--selection", required=True)
    p.add_argument("--reference", default=None,
                   help="the reference log-prob table of workflow.llm.reference (same adapter and selection); "
                        "lpo4rec, reference-free, runs without it unless its negatives are ranked by it")
    p.add_argument("--negatives", default=None,
                   help="a log-prob table of the same layout that strategies hardest and self rank the candidates "
                        "by instead of --reference (SPRec with its SFT phase: the previous round's model)")
    p.add_argument("--surrogate", default=None,
                   help="the SASRec surrogate's folder (item_embeddings.parquet, sequence_repr.parquet): napo's "
                        "auxiliary recommender, which scores its negatives' confidence and ranks users for sharing")
    p.add_argument("--spec", type=cli.json_arg, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)
    return cli.run(lambda a: run_preference(a.method, a.model_dir, a.adapter, a.samples, a.items, a.selection,
                                            a.reference, a.spec, a.seed, a.out, a.negatives, a.surrogate), p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
