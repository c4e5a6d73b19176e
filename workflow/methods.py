"""The LLM methods, one declaration each: what the run-name grammar (workflow/runs.py), the rules,
config/schema.yaml's enums and the preference trainer (workflow/llm/preference.py) need to know of
a method. Plain data, no model code: the bottom of the package (runs.py, read by the Snakefile)
derives its sets from it, the trainer dispatches on its flags, tests/test_methods.py holds the
schema's enums and blocks equal to it.

Adding a preference objective: its function in workflow/llm/losses.py (`OBJECTIVES`), its
declaration here with the block keys it takes (`OBJECTIVE_SETTINGS`), its config block in
config/schema.yaml (the schema's method enums are filled from these declarations: workflow/config.py
read_schema).

The choices of the methods' settings that the LLM layer acts on (negative strategies, LLaRA's
curricula, quantization) are declared here too, beside no torch import, so the schema's enums are
filled from them without loading the LLM layer.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    family: str                     # sft | preference (starts from the sft run) | hybrid | soft
    objective: str | None = None    # preference: its workflow/llm/losses.py OBJECTIVES key
    forms: tuple[tuple[str, str], ...] = ()  # preference: the block's `form` -> the OBJECTIVES key it trains instead
    reference_free: bool = False    # preference: the objective reads the policy's log-probs alone
    takes_k: bool = False           # the run name's -k (negatives per sample)
    surrogate: bool = False         # reads the SASRec surrogate's tables (rules' inputs, --surrogate)
    shares_negatives: bool = False  # trainer: in-batch negative sharing (its collate mask; the block's
                                    # share_negatives switches it off)
    state: bool = False             # trainer: a running state kept in the checkpoint (train.Hooks.state)
    online_reference: bool = False  # preference: its reference is scored during training (no reference table)


# In the order of the schema's enums and of runs.py's TRAINED (the order of run-name patterns).
METHODS: dict[str, Method] = {
    "sft": Method("sft"),
    "dmpo": Method("preference", "dmpo", takes_k=True),
    "sdpo": Method("preference", "sdpo", takes_k=True),
    "dynamicpo": Method("preference", "dynamicpo", takes_k=True),
    "llara": Method("hybrid", surrogate=True),  # the hybrid prompt: SASRec item embeddings after each title
    "ilora": Method("hybrid", surrogate=True),
    "soft": Method("soft"),
    "lpo4rec": Method("preference", "lpo4rec", forms=(("authors", "lpo4rec_authors"),), reference_free=True,
                      takes_k=True),
    # NAPO's auxiliary recommender is the surrogate; its margin averages confidence across steps
    "napo": Method("preference", "napo", reference_free=True, takes_k=True, surrogate=True, shares_negatives=True,
                   state=True),
    "grpo": Method("preference", "grpo", takes_k=True),
    # GRPO whose group is the policy's own beam over the whole catalogue (workflow/llm/catalogue_rl.py)
    "rere": Method("preference", "grpo_catalogue", online_reference=True),
    # DPO on the reference's top-ranked wrong candidate: one negative, fixed (no -k)
    "sprec": Method("preference", "dpo"),
}


def of_family(family: str) -> tuple[str, ...]:
    """The methods of one family, in declaration order."""
    return tuple(name for name, m in METHODS.items() if m.family == family)


FAMILIES = tuple(dict.fromkeys(m.family for m in METHODS.values()))  # in declaration order


def portable(method: str) -> bool:
    """Whether a method's runs can be explained and evaluated on another dataset (transfer): not the
    hybrid ones, whose prompt carries the training dataset's SASRec item embeddings through hooks on
    the model (the explanation stage loads none; another dataset's items have no row in that table)."""
    return METHODS[method].family != "hybrid"


# The keyword arguments each preference objective (workflow/llm/losses.py OBJECTIVES) takes from a run's
# config block: argument -> (block key, type). What a batch adds (NAPO's margin, the authors' LPO4Rec's
# tail flags) the trainer passes per step; rere's objective has a trainer of its own (catalogue_rl.py).
BETA = {"beta": ("beta", float)}
OBJECTIVE_SETTINGS: dict[str, dict[str, tuple[str, type]]] = {
    "dpo": BETA,
    "dmpo": {**BETA, "pairwise": ("pairwise", bool)},
    "sdpo": BETA,
    "dynamicpo": {**BETA, "margin": ("margin", float)},
    "lpo4rec": BETA,
    # beta has no place in the authors' form: their temperature acts on probabilities
    "lpo4rec_authors": {"weight": ("lpo_weight", float), "temperature": ("temperature", float)},
    "napo": BETA,
    "grpo": {**BETA, "group_size": ("group_size", int), "kl_coef": ("kl_coef", float), "kl": ("kl", str),
             "eps": ("eps", float)},
}


@dataclass(frozen=True)
class Negatives:
    """What a negative-sampling strategy reads besides the candidates (workflow/llm/preference.py
    choose_negatives), so the rules, the trainer and the schema's enums ask one table."""
    ranked: bool = False      # ranks the candidates by a model's log-probs (the reference's, or --negatives')
    popularity: bool = False  # draws weighted by train-split popularity
    head: bool = False        # draws among the head items: needs the block's head_share (lpo4rec's)


# In the order of the schema's enums.
NEGATIVES: dict[str, Negatives] = {
    "random": Negatives(),                 # k uniformly (seeded)
    "hardest": Negatives(ranked=True),     # the k highest reference log-probs
    "all": Negatives(),                    # every other candidate (k ignored)
    "self": Negatives(ranked=True),        # SPRec: the reference's top-ranked wrong candidate (k = 1)
    "tail": Negatives(popularity=True),    # with probability proportional to 1 / (1 + popularity)
    "head": Negatives(popularity=True),    # proportional to 1 + popularity
    "head_gumbel": Negatives(head=True),   # LPO4Rec's: uniformly among the head items
}


GATES = ("sequence", "random", "uniform")  # iLoRA's gate inputs (workflow/llm/ilora.py)


def gate_reads_inputs(gate: str) -> bool:
    """Whether an iLoRA gate (GATES) weighs the experts by a router over a per-sample input
    (sequence, random); `uniform` weighs them equally and has no router."""
    return gate != "uniform"


CURRICULA = ("linear", "authors", "per_epoch", "hybrid")  # LLaRA / iLoRA: workflow/llm/llara.py hybrid_probability
QUANTIZATION = ("none", "int8", "nf4")  # llm.quantization: workflow/llm/model.py quantization_config
