"""LLM run names: what a run is, read from its name alone.

A run is one LLM method under one prompt, with optional overrides of its config block:

    {method}-{prompt}[-k{negatives}][-b{beta}][-lr{learning rate}][-x{experts}][-g{gate}][-a{alpha}][-r{rounds}][-e{epochs}][-n{budget}][-s{seed}]

e.g. `sft-open`, `base-candidate`, `dmpo-open-k15`, `sft-candidate-e3-n512`. The name is the
`method` column of every metrics table and the folder of the run's outputs, so two runs that differ
in anything that changes their result never share a name, and a reader of the summary sees the
prompt of every row. Overrides:
- `k`: negatives per sample (preference methods but sprec, whose one negative is fixed);
- `b`: a preference objective's beta (e.g. `dmpo-open-b0.1`);
- `lr`: the learning rate of the run's block, in one spelling: mantissa, `e`, exponent, no padding
  (`dmpo-open-lr5e-4`, `sft-open-lr1.5e-4`; `lr_text`), so one rate has one name;
- `x`, `g`: iLoRA's number of experts and gate input (sequence, random, uniform);
- `a`: SOFT's curriculum alpha (e.g. `soft-open-a0.1`);
- `r`: SPRec's self-play rounds (e.g. `sprec-open-r3`: round 3 starts from, and is referenced
  against, `sprec-open-r2`; round 1 from the sft run; `previous_round`);
- `e`: training epochs;
- `n`: train on a seeded subset of `n` samples of the selection (the first n of one fixed seeded
  permutation, so n = 128 lies inside n = 512: learning-curve points differ only by the added data);
- `s`: the training seed (LoRA initialisation, example order, negatives, the random selection and the
  -n subset); absent = the config's `seed`. The config's `seeds` list trains every trained run once
  per seed (`config_runs`), naming all but the config's own seed, so the default's names stay.

A preference run starts from (and is referenced against) the sft run of the same prompt, budget and
seed, with sft's own epochs: `dmpo-open-e3-n512` starts from `sft-open-n512`; a SOFT run self-distils from
that sft run too. LLaRA and iLoRA train a fresh LoRA on the base model with the hybrid prompt
(SASRec item embeddings in the prompt); their summary rows are read against the same sft run.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

from workflow.methods import METHODS as DECLARED, of_family
from workflow.protocol_table import supported as supported_protocols

PROMPTS = ("candidate", "open", "sid")  # sid: items shown and answered by semantic ID (workflow/semantic_ids.py)
# The method sets, from the one declaration per method (workflow/methods.py).
PREFERENCE = of_family("preference")  # workflow/llm/preference.py
TRAINED = tuple(DECLARED)
TAKES_K = tuple(m for m, d in DECLARED.items() if d.takes_k)  # the -k flag; sprec's one negative is fixed
HYBRID = of_family("hybrid")  # the hybrid prompt: SASRec item embeddings after each title
GATES = ("sequence", "random", "uniform")  # iLoRA's gate inputs (workflow/llm/ilora.py)
METHODS = ("base", *TRAINED)
# The protocols each prompt supports, from workflow/protocol_table.py's table (`supported_protocols`).
PROMPT_PROTOCOLS = {prompt: supported_protocols(prompt) for prompt in PROMPTS}

# The override flags, in the order a name gives them: (letter, Run field, what it sets, the pattern of
# its value, the methods it applies to). The one grammar of run names: `parse` reads names by it and
# `wildcard_pattern` builds the rules' `run` wildcard constraints from it.
FLAG_SYNTAX = (
    ("k", "k", "negatives", "[0-9]+", TAKES_K),
    ("b", "beta", "beta", r"[0-9]+(?:\.[0-9]+)?", PREFERENCE),
    ("lr", "lr", "learning rate", r"[1-9](?:\.[0-9]*[1-9])?e-?[0-9]+", TRAINED),
    ("x", "experts", "experts", "[0-9]+", ("ilora",)),
    ("g", "gate", "gate", "[a-z]+", ("ilora",)),
    ("a", "alpha", "alpha", r"[0-9]+(?:\.[0-9]+)?", ("soft",)),
    ("r", "rounds", "rounds", "[0-9]+", ("sprec",)),
    ("e", "epochs", "epochs", "[0-9]+", TRAINED),
    ("n", "budget", "budget", "[0-9]+", TRAINED),
    ("s", "seed", "seed", "[0-9]+", TRAINED),
)
FLAGS = tuple((flag, field) for flag, field, *_ in FLAG_SYNTAX)
NAME = re.compile("^(?P<method>[a-z][a-z0-9]*)-(?P<prompt>[a-z]+)"
                  + "".join(f"(?:-{flag}(?P<{field}>{value}))?" for flag, field, _, value, _ in FLAG_SYNTAX) + "$")


def wildcard_pattern(methods) -> str:
    """A regular expression matching the names of runs of `methods` only: each method with a prompt
    and the flags it takes, in order (gates spelled out). The rules' `run` wildcard constraints, so a
    run name selects the one rule that makes it."""
    def method_pattern(method: str) -> str:
        flags = "".join(f"(?:-{flag}{'(?:' + '|'.join(GATES) + ')' if field == 'gate' else value})?"
                        for flag, field, _, value, applies in FLAG_SYNTAX if method in applies)
        return f"{method}-(?:{'|'.join(PROMPTS)}){flags}"

    return "(?:" + "|".join(method_pattern(m) for m in methods) + ")"


def lr_text(lr: float) -> str:
    """A learning rate as a run name spells it: `5e-4`, `1.5e-4`, `1e-5` (the shortest mantissa that
    reads back the same float; no exponent padding, so the name has one spelling per rate)."""
    if not lr > 0:
        raise ValueError(f"learning rate must be positive, got {lr!r}")
    for digits in range(17):
        mantissa, exponent = f"{lr:.{digits}e}".split("e")
        if float(f"{mantissa}e{exponent}") == lr:
            break
    return f"{mantissa}e{int(exponent)}"


class Run(NamedTuple):
    method: str
    prompt: str
    k: int | None = None
    epochs: int | None = None
    budget: int | None = None
    experts: int | None = None
    gate: str | None = None
    alpha: float | None = None
    seed: int | None = None  # the training seed; None = the config's `seed`
    rounds: int | None = None  # SPRec's rounds; None = its block's
    beta: float | None = None  # a preference objective's beta; None = its block's
    lr: float | None = None  # the learning rate; None = its block's

    @property
    def name(self) -> str:
        def text(key: str) -> str:
            value = getattr(self, key)
            return lr_text(value) if key == "lr" else f"{value:g}" if key in ("alpha", "beta") else f"{value}"

        return "-".join([self.method, self.prompt, *(f"{flag}{text(key)}" for flag, key in FLAGS
                                                      if getattr(self, key) is not None)])

    def sft(self) -> "Run":
        """The sft run a preference or SOFT run starts from, and every tuned run is read against
        (same prompt, budget and seed)."""
        return Run("sft", self.prompt, budget=self.budget, seed=self.seed)

    def protocols(self, wanted) -> list[str]:
        """The wanted protocols this run's prompt supports, in the order given."""
        return [p for p in wanted if p in supported_protocols(self.prompt)]


def parse(name: str) -> Run:
    """The run a name stands for; a malformed name raises ValueError naming what is wrong."""
    match = NAME.match(name)
    if not match:
        raise ValueError(f"run name {name!r} is not {{method}}-{{prompt}}[-k<int>][-b<number>][-lr<m>e<exp>][-x<int>]"
                         f"[-g<gate>][-a<number>]"
                         f"[-r<int>][-e<int>][-n<int>][-s<int>] (e.g. sft-open, dmpo-candidate-k7, ilora-open-x4, "
                         f"sprec-open-r2, sft-open-s43)")
    method, prompt = match["method"], match["prompt"]
    if method not in METHODS:
        raise ValueError(f"run name {name!r}: unknown method {method!r} (known: {', '.join(METHODS)})")
    if prompt not in PROMPTS:
        raise ValueError(f"run name {name!r}: unknown prompt {prompt!r} (known: {', '.join(PROMPTS)})")
    values: dict[str, Any] = {key: int(match[key]) for key in ("k", "experts", "rounds", "epochs", "budget")
                              if match[key] is not None}
    if any(v < 1 for v in values.values()):
        raise ValueError(f"run name {name!r}: k, x, r, e and n must be positive")
    if match["seed"] is not None:
        values["seed"] = int(match["seed"])
    if match["gate"] is not None:
        if match["gate"] not in GATES:
            raise ValueError(f"run name {name!r}: unknown gate {match['gate']!r} (known: {', '.join(GATES)})")
        values["gate"] = match["gate"]
    for field, flag in (("alpha", "a"), ("beta", "b")):
        if match[field] is not None:
            values[field] = float(match[field])
            if values[field] <= 0:
                raise ValueError(f"run name {name!r}: -{flag} ({field}) must be positive")
    if match["lr"] is not None:
        values["lr"] = float(match["lr"])
        if lr_text(values["lr"]) != match["lr"]:  # one spelling per rate, so a run is never trained twice
            raise ValueError(f"run name {name!r}: write the learning rate as -lr{lr_text(values['lr'])}")
    if method == "base" and values:
        raise ValueError(f"run name {name!r}: the untuned base model takes no -k/-b/-lr/-x/-g/-a/-r/-e/-n/-s")
    for flag, field, what, _, applies in FLAG_SYNTAX:
        if field in values and method not in applies:
            raise ValueError(f"run name {name!r}: -{flag} ({what}) applies to {', '.join(applies)} only")
    return Run(method, prompt, **values)


def resolve(entry: str, config: dict[str, Any]) -> list[Run]:
    """The runs one entry of the config's `methods` list stands for: a run name, or a bare method
    name, which takes its block's `prompt` (`base`: every prompt a trained entry of `methods` uses,
    `candidate` when there is none)."""
    if "-" in entry:
        return [parse(entry)]
    if entry == "base":
        prompts = {run.prompt for other in config["methods"] if other != "base"
                   for run in resolve(other, config)} or {"candidate"}
        return [Run("base", p) for p in PROMPTS if p in prompts]
    if entry not in TRAINED:
        raise ValueError(f"config key 'methods': unknown method {entry!r} (known: {', '.join(METHODS)})")
    return [Run(entry, config[entry]["prompt"])]


def config_seeds(config: dict[str, Any]) -> list[int]:
    """The training seeds: the config's `seeds` in order (each once), else its one `seed`."""
    return list(dict.fromkeys(config.get("seeds") or [config["seed"]]))


def at_seed(run: Run, seed: int, config: dict[str, Any]) -> Run:
    """`run` trained with `seed`. The config's own seed stays out of the name, so a config whose
    `seeds` is absent or holds only `seed` names (and stores) its runs as before."""
    return run._replace(seed=None if seed == config["seed"] else seed)


def run_seed(run: Run, config: dict[str, Any]) -> int:
    """The seed a run trains with: its -s, else the config's `seed`."""
    return config["seed"] if run.seed is None else run.seed


def per_seed(run: Run, config: dict[str, Any]) -> list[Run]:
    """The run once per training seed; the untuned base model (nothing to seed) and a run whose name
    says its seed stay one run."""
    if run.method == "base" or run.seed is not None:
        return [run]
    return [at_seed(run, seed, config) for seed in config_seeds(config)]


def config_runs(config: dict[str, Any]) -> list[Run]:
    """Every run of the config's `methods` list, each trained run once per training seed (`seeds`),
    each once, in list order (a run's seeds next to each other)."""
    runs = [seeded for entry in config["methods"] for run in resolve(entry, config) for seeded in per_seed(run, config)]
    return list(dict.fromkeys(runs))


BLOCK_KEYS = {"k": "k", "epochs": "epochs", "experts": "n_experts", "gate": "gate", "alpha": "alpha",
              "rounds": "rounds", "beta": "beta", "lr": "lr"}


def block(run: Run, config: dict[str, Any]) -> dict[str, Any]:
    """The run's training settings: its method's config block with the name's -k, -b, -lr, -x, -g, -a, -r and -e
    (the prompt and -n budget travel beside the block, as every LLM stage's `prompt` and `budget`)."""
    settings = {key: value for key, value in config[run.method].items() if key != "prompt"}
    for field, key in BLOCK_KEYS.items():
        if getattr(run, field) is not None:
            settings[key] = getattr(run, field)
    return settings


# Negative strategies that rank the candidates by a model's log-probs (the reference's, or those of
# preference --negatives): workflow/llm/preference.py choose_negatives.
RANKED_STRATEGIES = ("hardest", "self")


REFERENCE_FREE = tuple(m for m, d in DECLARED.items() if d.reference_free)  # the policy's log-probs alone


def reads_reference(method: str, strategy: str | None) -> bool:
    """Whether a preference method with this negative strategy reads the reference log-probs: every
    objective but the reference-free ones (LPO4Rec, NAPO) does, and those too when their negatives
    are ranked by them (RANKED_STRATEGIES). The rules (`needs_reference`) and the trainer ask this
    one function."""
    return method not in REFERENCE_FREE or strategy in RANKED_STRATEGIES


def needs_reference(run: Run, config: dict[str, Any]) -> bool:
    """Whether a preference run reads its start's reference log-probs (`reads_reference`)."""
    return reads_reference(run.method, block(run, config).get("strategy"))


def sft_phase(run: Run, config: dict[str, Any]) -> bool:
    """Whether an SPRec round runs the authors' SFT phase first (`sprec.sft_phase`): its start trained
    one epoch further on the positives, which the round's DPO then starts from and is referenced
    against (rules/preference.smk, rule sprec_sft_phase)."""
    return run.method == "sprec" and bool(block(run, config).get("sft_phase"))


def previous_round(run: Run, config: dict[str, Any]) -> Run | None:
    """The run an SPRec round starts from and is referenced against: the same run one round
    earlier (its -r left out where that equals the sprec block's `rounds`, so the config's own run
    is reused), None for round 1 (which starts from the sft run) and for every other method."""
    if run.method != "sprec":
        return None
    rounds = block(run, config)["rounds"]
    if rounds <= 1:
        return None
    earlier = rounds - 1
    return run._replace(rounds=None if earlier == config["sprec"]["rounds"] else earlier)


# Study grid axes: axis -> (the Run field it sets, the methods it applies to; None = every method).
# `prompt` and `budget` apply to every method; the others override a key of the method's block.
AXES = {"prompt": ("prompt", None), "k": ("k", TAKES_K), "epochs": ("epochs", None),
        "budget": ("budget", None), "n_experts": ("experts", ("ilora",)), "gate": ("gate", ("ilora",)),
        "alpha": ("alpha", ("soft",)), "rounds": ("rounds", ("sprec",)), "beta": ("beta", PREFERENCE),
        "lr": ("lr", TRAINED)}


def grid_point(method: str, point: dict[str, Any], config: dict[str, Any]) -> tuple[dict[str, Any], Run]:
    """(labels, run) of one method at one study grid point. A value equal to the main config's is
    left out of the run's name, so a main run is reused rather than retrained; labels hold the
    effective value of every axis that applies to the method (what the table and the plot show)."""
    block_cfg = config[method]
    pool = config["selection"]["budget"]
    labels: dict[str, Any] = {"method": method}
    fields: dict[str, Any] = {}
    for axis, (field, methods) in AXES.items():
        if methods is not None and method not in methods:
            labels[axis] = None
            continue
        default = pool if axis == "budget" else block_cfg.get(BLOCK_KEYS.get(field, axis), None)
        value = point.get(axis, default)
        # strategy all: every other candidate is a negative, whatever the block's k
        labels[axis] = None if axis == "k" and block_cfg.get("strategy") == "all" and axis not in point else value
        if axis == "budget" and value is not None and value > pool and "all" not in config["selection"]["strategies"]:
            raise ValueError(f"study grid budget {value} exceeds selection.budget ({pool})")
        explicit = axis == "k" and block_cfg.get("strategy") == "all"  # k is then the data's, not the block's
        if axis == "prompt" or (value != default or explicit) and axis in point:
            fields[field] = value
    return labels, Run(method, **fields)
