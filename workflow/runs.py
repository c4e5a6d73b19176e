"""LLM run names: what a run is, read from its name alone.

A run is one LLM method under one prompt, with optional overrides of its config block:

    {method}-{prompt}[-k{negatives}][-b{beta}][-lr{learning rate}][-rank{LoRA rank}][-x{experts}][-g{gate}]
        [-a{alpha}][-r{rounds}][-e{epochs}][-n{budget}][-s{seed}]

e.g. `sft-open`, `base-candidate`, `dmpo-open-k15`, `sft-candidate-e3-n512`. The name is the
`method` column of every metrics table and the folder of the run's outputs, so two runs that differ
in anything that changes their result never share a name, and a reader of the summary sees the
prompt of every row. Overrides:
- `k`: negatives per sample (preference methods but sprec, whose one negative is fixed);
- `b`: a preference objective's beta (e.g. `dmpo-open-b0.1`);
- `lr`: the learning rate of the run's block, in one spelling: mantissa, `e`, exponent, no padding
  (`dmpo-open-lr5e-4`, `sft-open-lr1.5e-4`; `lr_text`), so one rate has one name;
- `rank`: the LoRA rank (`lora_r`) of a run that trains a fresh LoRA (sft, llara, ilora, soft; a
  preference run continues its sft start's adapter, at that run's rank);
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

import itertools
import re
import zlib
from collections import namedtuple
from typing import Any, NamedTuple

import numpy as np

from workflow.methods import GATES, METHODS as DECLARED, NEGATIVES, of_family
from workflow.protocol_table import supported as supported_protocols

# The prompts that show and answer every item by a code ID (workflow/semantic_ids.py; what each quantises:
# config `semantic_ids.embeddings`): sid, content IDs of the items' titles (TIGER, MiniOneRec); cid,
# collaborative IDs of SASRec's item embeddings (Hua et al. 2023).
ID_PROMPTS = ("sid", "cid")
DEFAULT_PROMPT = "candidate"  # a stage's when its --spec names none; base's when no trained run names one
PROMPTS = (DEFAULT_PROMPT, "open", *ID_PROMPTS)
# The method sets, from the one declaration per method (workflow/methods.py).
PREFERENCE = of_family("preference")  # workflow/llm/preference.py
TRAINED = tuple(DECLARED)
TAKES_K = tuple(m for m, d in DECLARED.items() if d.takes_k)  # the -k flag; sprec's one negative is fixed
FRESH_LORA = tuple(m for m, d in DECLARED.items() if d.family != "preference")  # the -rank flag
HYBRID = of_family("hybrid")  # the hybrid prompt: SASRec item embeddings after each title
# The selection strategies (workflow/selection/): random and all, then DEALRec's, which score the samples
# (workflow/selection/dealrec.py lists those too; tests/test_config.py holds the two equal)
DEALREC_STRATEGIES = ("dealrec", "influence", "effort")
SELECTIONS = ("random", "all", *DEALREC_STRATEGIES)
METHODS = ("base", *TRAINED)
# The protocols each prompt supports, from workflow/protocol_table.py's table (`supported_protocols`).
PROMPT_PROTOCOLS = {prompt: supported_protocols(prompt) for prompt in PROMPTS}

class Axis(NamedTuple):
    """One setting a run name or a study grid varies, declared once: the parser, the rules' `run`
    wildcard constraints, `block`, the study grid (`grid_point`, config/schema.yaml's
    `studies.<name>.grid`, tests/test_runs.py holds them equal) and the study's table and labels read it."""
    name: str  # the Run field, the method block's key, the study grid key and the study table's column
    flag: str  # its letter in a run name; "" = the prompt, which a name gives positionally
    kind: type  # int (positive but the seed), float (positive) or str (one of `choices`)
    value: str  # the pattern of its value in a name
    methods: tuple[str, ...] | None  # the methods it applies to; None = every method
    what: str  # in words, for messages
    block: bool = True  # overrides the method block's key of that name (prompt, budget, seed travel beside it)
    grid: bool = True  # a study grid key (a study's seeds are its own `seeds`)
    choices: tuple[str, ...] = ()


NUMBER = r"[0-9]+(?:\.[0-9]+)?"
# In the order a name gives them: run names are folder names, so a flag's letter, value spelling and
# place here never change (a change would detach stored results).
RUN_AXES = (
    Axis("prompt", "", str, "[a-z]+", None, "prompt", block=False, choices=PROMPTS),
    Axis("k", "k", int, "[0-9]+", TAKES_K, "negatives"),
    Axis("beta", "b", float, NUMBER, tuple(m for m in PREFERENCE if not DECLARED[m].online_reference), "beta"),
    Axis("lr", "lr", float, r"[1-9](?:\.[0-9]*[1-9])?e-?[0-9]+", TRAINED, "learning rate"),
    Axis("lora_r", "rank", int, "[0-9]+", FRESH_LORA, "LoRA rank"),
    Axis("n_experts", "x", int, "[0-9]+", ("ilora",), "experts"),
    Axis("gate", "g", str, "[a-z]+", ("ilora",), "gate", choices=GATES),
    Axis("alpha", "a", float, NUMBER, ("soft",), "alpha"),
    Axis("rounds", "r", int, "[0-9]+", ("sprec",), "rounds"),
    Axis("epochs", "e", int, "[0-9]+", TRAINED, "epochs"),
    Axis("budget", "n", int, "[0-9]+", TRAINED, "budget", block=False),
    Axis("seed", "s", int, "[0-9]+", TRAINED, "seed", block=False, grid=False),
)
FLAG_AXES = tuple(a for a in RUN_AXES if a.flag)  # the override flags of a name
GRID_AXES = tuple(a for a in RUN_AXES if a.grid)  # the keys of a study grid
SYNTAX = "".join(f"[-{a.flag}<{'m>e<exp' if a.name == 'lr' else a.kind.__name__.replace('str', a.name)}>]"
                 for a in FLAG_AXES)  # for messages: [-k<int>][-b<float>][-lr<m>e<exp>]...
NAME = re.compile("^(?P<method>[a-z][a-z0-9]*)-(?P<prompt>[a-z]+)"
                  + "".join(f"(?:-{a.flag}(?P<{a.name}>{a.value}))?" for a in FLAG_AXES) + "$")


def wildcard_pattern(methods) -> str:
    """A regular expression matching the names of runs of `methods` only: each method with a prompt
    and the flags it takes, in order (gates spelled out). The rules' `run` wildcard constraints, so a
    run name selects the one rule that makes it."""
    def method_pattern(method: str) -> str:
        flags = "".join(f"(?:-{a.flag}{'(?:' + '|'.join(a.choices) + ')' if a.choices else a.value})?"
                        for a in FLAG_AXES if method in a.methods)
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


def number_text(name: str, value) -> str:
    """A setting's number as a name spells it: the learning rate by `lr_text`, any other by %g."""
    return lr_text(value) if name == "lr" else f"{value:g}"


def value_text(axis: Axis, value) -> str:
    """An override's value as a run name spells it: a float by `number_text`, an int or a choice as is."""
    return number_text(axis.name, value) if axis.kind is float else f"{value}"


# A run: its method and prompt, and each override of its name (None = its block's; the seed: the config's).
class Run(namedtuple("RunFields", ["method", "prompt", *(a.name for a in FLAG_AXES)],
                     defaults=[None] * len(FLAG_AXES))):
    __slots__ = ()

    @property
    def name(self) -> str:
        return "-".join([self.method, self.prompt, *(f"{a.flag}{value_text(a, getattr(self, a.name))}"
                                                      for a in FLAG_AXES if getattr(self, a.name) is not None)])

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
        raise ValueError(f"run name {name!r} is not {{method}}-{{prompt}}{SYNTAX} (e.g. sft-open, dmpo-candidate-k7, "
                         f"ilora-open-x4, sprec-open-r2, sft-open-s43)")
    method, prompt = match["method"], match["prompt"]
    if method not in METHODS:
        raise ValueError(f"run name {name!r}: unknown method {method!r} (known: {', '.join(METHODS)})")
    if prompt not in PROMPTS:
        raise ValueError(f"run name {name!r}: unknown prompt {prompt!r} (known: {', '.join(PROMPTS)})")
    values: dict[str, Any] = {a.name: a.kind(match[a.name]) for a in FLAG_AXES if match[a.name] is not None}
    for a in FLAG_AXES:
        if a.name not in values:
            continue
        if a.choices and values[a.name] not in a.choices:
            raise ValueError(f"run name {name!r}: unknown {a.what} {values[a.name]!r} (known: {', '.join(a.choices)})")
        if a.kind is not str and a.name != "seed" and values[a.name] <= 0:
            raise ValueError(f"run name {name!r}: -{a.flag} ({a.what}) must be positive")
    # one spelling per rate, so a run is never trained twice
    if "lr" in values and lr_text(values["lr"]) != match["lr"]:
        raise ValueError(f"run name {name!r}: write the learning rate as -lr{lr_text(values['lr'])}")
    if method == "base" and values:
        raise ValueError(f"run name {name!r}: the untuned base model takes no "
                         + "/".join(f"-{a.flag}" for a in FLAG_AXES))
    for a in FLAG_AXES:
        if a.name in values and method not in a.methods:
            raise ValueError(f"run name {name!r}: -{a.flag} ({a.what}) applies to {', '.join(a.methods)} only")
    return Run(method, prompt, **values)


def resolve(entry: str, config: dict[str, Any]) -> list[Run]:
    """The runs one entry of the config's `methods` list stands for: a run name, or a bare method
    name, which takes its block's `prompt` (`base`: every prompt a trained entry of `methods` uses,
    `candidate` when there is none)."""
    if "-" in entry:
        return [parse(entry)]
    if entry == "base":
        prompts = {run.prompt for other in config["methods"] if other != "base"
                   for run in resolve(other, config)} or {DEFAULT_PROMPT}
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


def block(run: Run, config: dict[str, Any]) -> dict[str, Any]:
    """The run's training settings: its method's config block with the name's overrides of its keys
    (the prompt and -n budget travel beside the block, as every LLM stage's `prompt` and `budget`)."""
    settings = {key: value for key, value in config[run.method].items() if key != "prompt"}
    for a in FLAG_AXES:
        if a.block and getattr(run, a.name) is not None:
            settings[a.name] = getattr(run, a.name)
    return settings


# Negative strategies that rank the candidates by a model's log-probs (the reference's, or those of
# preference --negatives): workflow/llm/preference.py choose_negatives.
RANKED_STRATEGIES = tuple(name for name, negatives in NEGATIVES.items() if negatives.ranked)


REFERENCE_FREE = tuple(m for m, d in DECLARED.items() if d.reference_free)  # the policy's log-probs alone


def reads_reference(method: str, strategy: str | None) -> bool:
    """Whether a preference method with this negative strategy reads the reference log-probs: every
    objective but the reference-free ones (LPO4Rec, NAPO) does, and those too when their negatives
    are ranked by them (RANKED_STRATEGIES). The rules (`needs_reference`) and the trainer ask this
    one function."""
    return method not in REFERENCE_FREE or strategy in RANKED_STRATEGIES


def needs_reference(run: Run, config: dict[str, Any]) -> bool:
    """Whether a preference run reads its start's reference log-probs (`reads_reference`); a method
    that scores its reference online (rere) reads none."""
    return reads_reference(run.method, block(run, config).get("strategy")) and not DECLARED[run.method].online_reference


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


def over_budget(budget: int, config: dict[str, Any]) -> str | None:
    """Why a run cannot train on `budget` samples: more than the selection holds (`selection.budget`;
    strategy `all` takes every train sample, so any budget may fit); None when it can."""
    pool = config["selection"]["budget"]
    if budget > pool and "all" not in config["selection"]["strategies"]:
        return f"budget {budget} exceeds selection.budget ({pool})"
    return None


def expert_rank_problem(run: Run, config: dict[str, Any]) -> str | None:
    """Why a run whose name sets the LoRA rank or iLoRA's experts cannot train: iLoRA splits its
    rank among its experts, so lora_r must be a multiple of n_experts (workflow/llm/ilora.py
    ExpertLoRALinear; the ilora block itself is checked by config.validate); None when it can."""
    if run.lora_r is None and run.n_experts is None:
        return None
    return rank_split_problem(block(run, config))


def rank_split_problem(settings: dict[str, Any]) -> str | None:
    """Why a method block's LoRA rank cannot be split among its experts (iLoRA's; None for a block
    without experts or a rank that splits)."""
    if "n_experts" in settings and settings["lora_r"] % settings["n_experts"]:
        return (f"lora_r {settings['lora_r']} is not a multiple of n_experts {settings['n_experts']} "
                "(each expert has rank lora_r / n_experts)")
    return None


def axis_not_taken(methods: list[str], axis: str) -> str | None:
    """Why a study grid or tuning space axis is wrong for `methods`: none of them takes it, so its
    values would name the same run; None when one does."""
    applies = next(a.methods for a in GRID_AXES if a.name == axis)
    if applies is None or set(methods) & set(applies):
        return None
    return (f"{', '.join(methods)} {'does' if len(methods) == 1 else 'do'} not take {axis} "
            f"(it applies to {', '.join(applies)})")


def grid_point(method: str, point: dict[str, Any], config: dict[str, Any]) -> tuple[dict[str, Any], Run]:
    """(labels, run) of one method at one study grid point. A value equal to the main config's is
    left out of the run's name, so a main run is reused rather than retrained; labels hold the
    effective value of every axis that applies to the method (what the table and the plot show)."""
    block_cfg = config[method]
    pool = config["selection"]["budget"]
    labels: dict[str, Any] = {"method": method}
    fields: dict[str, Any] = {}
    for axis, applies in ((a.name, a.methods) for a in GRID_AXES):
        if applies is not None and method not in applies:
            labels[axis] = None
            continue
        default = pool if axis == "budget" else block_cfg.get(axis)
        value = point.get(axis, default)
        # strategy all: every other candidate is a negative, whatever the block's k
        labels[axis] = None if axis == "k" and block_cfg.get("strategy") == "all" and axis not in point else value
        if axis == "budget" and value is not None and (problem := over_budget(value, config)):
            raise ValueError(f"study grid {problem}")
        explicit = axis == "k" and block_cfg.get("strategy") == "all"  # k is then the data's, not the block's
        if axis == "prompt" or (value != default or explicit) and axis in point:
            fields[axis] = value
    return labels, Run(method, **fields)


def study_points(name: str, config: dict[str, Any]) -> list[tuple[dict[str, Any], Run]]:
    """(labels, run) of every run of study `name`: each method at every combination of its grid
    (`grid_point`: a main run is reused, not retrained), and with a `reference` that method's run at
    each prompt and budget the grid visits (labelled `reference`). A bad grid raises ValueError."""
    study = config["studies"][name]
    grid = study["grid"]
    if study["x"] not in grid:
        raise ValueError(f"config key 'studies.{name}.x': {study['x']!r} is not a key of its grid")
    for axis in grid:
        if problem := axis_not_taken(study["methods"], axis):
            raise ValueError(f"config key 'studies.{name}.grid.{axis}': {problem}")
    try:
        points = [grid_point(method, point, config)
                  for method in study["methods"] for point in sampled_points(name, method, config)]
        for _, run in points:
            if problem := expert_rank_problem(run, config):
                raise ValueError(f"run {run.name!r}: {problem}")
        if study.get("reference"):
            shared = {tuple((axis, labels[axis]) for axis in ("prompt", "budget") if axis in grid)
                      for labels, _ in points}
            references = [grid_point(study["reference"], dict(point), config) for point in sorted(shared)]
            points += [({**labels, "reference": True}, run) for labels, run in references]
    except ValueError as exc:
        raise ValueError(f"config key 'studies.{name}.grid': {exc}") from exc
    return points


def sampled_points(name: str, method: str, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The grid points study `name` runs `method` at: every combination of its grid, or, with
    `trials: T`, T distinct runs of it (`draw_trials`; the main config's own point is the method
    block's value on every axis the grid varies). Fewer than T distinct runs raise ValueError:
    every method of a study gets the same number of trials."""
    study = config["studies"][name]
    grid = study["grid"]
    if study.get("trials") is None:
        return every_point(grid)
    distinct = distinct_points(name, method, config)
    main = grid_point(method, {axis: values[0] for axis, values in grid.items() if len(values) == 1}, config)[1]
    runs = draw_trials(list(distinct), main, study["trials"], f"{name}/{method}", config["seed"])
    return [distinct[run] for run in runs]


def every_point(grid: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of a grid's (or a space's) values, in its order."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def distinct_points(name: str, method: str, config: dict[str, Any]) -> dict[Run, dict[str, Any]]:
    """Study `name`'s grid points of `method`, one per distinct run, keyed by the run (an axis the
    method does not take leaves its points one run): what `trials` draws from."""
    distinct: dict[Run, dict[str, Any]] = {}
    for point in every_point(config["studies"][name]["grid"]):
        distinct.setdefault(grid_point(method, point, config)[1], point)
    return distinct


def draw_trials(candidates: list, main: Any, trials: int, key: str, seed: int) -> list:
    """`trials` of `candidates`: `main` (the default settings) first where it is one of them, so a
    tuning never scores below its default on the split it selects on, then a seeded draw without
    replacement from the rest in their order (numpy, seeded by `seed` and a CRC32 of `key`: each
    method has its own draw, a rerun the same). Fewer candidates than trials raise ValueError."""
    if len(candidates) < trials:
        raise ValueError(f"{key.rsplit('/', 1)[-1]}: {len(candidates)} distinct runs in the grid, fewer than "
                         f"trials ({trials})")
    first = [c for c in candidates if c == main]
    rest = [c for c in candidates if c != main]
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    return first + [rest[i] for i in sorted(rng.choice(len(rest), size=trials - len(first), replace=False))]


def study_seeds(name: str, config: dict[str, Any]) -> list[int]:
    """The training seeds of a study's runs: its `seeds`, else the config's one `seed`."""
    return list(dict.fromkeys(config["studies"][name].get("seeds") or [config["seed"]]))


# Tuning (workflow/tuning.py) is one study per method, derived here, below config.py, which adds them
# to every validated config's `studies`.
TUNING_PREFIX = "tuning-"  # a method's tuning study: results/studies/tuning-<method>.{parquet,md,png}


def tuning_study(method: str) -> str:
    return f"{TUNING_PREFIX}{method}"


def tuning_seeds(config: dict[str, Any]) -> list[int]:
    """The seeds every trial runs at and the tuned table pools: `tuning.seeds`, else the config's."""
    return config["tuning"]["seeds"] or config_seeds(config)


def tuning_studies(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The study of each method of `tuning.spaces` (a study config, as `studies.<name>` after the
    schema's defaults)."""
    tuning = config["tuning"]
    for method, space in tuning["spaces"].items():
        for axis in space:
            if problem := axis_not_taken([method], axis):
                raise ValueError(f"config key 'tuning.spaces.{method}.{axis}': {problem}")
    seeds = tuning_seeds(config)
    metrics = list(dict.fromkeys([tuning["metric"], *tuning["metrics"]]))
    return {tuning_study(method): {
        "enabled": False, "methods": [method], "x": next(iter(space)), "seeds": seeds, "split": "valid",
        "grid": {"prompt": [config[method]["prompt"]], "budget": [tuning["budget"]], **space},
        "protocols": [tuning["protocol"]], "metrics": metrics, "trials": tuning["trials"]}
        for method, space in tuning["spaces"].items()}


def with_tuning_studies(config: dict[str, Any]) -> dict[str, Any]:
    """`config` with the tuning studies among its `studies` (a study of the same name is an error)."""
    derived = tuning_studies(config)
    taken = sorted(name for name in set(derived) & set(config["studies"]) if config["studies"][name] != derived[name])
    if taken:
        raise ValueError(f"config key 'studies.{taken[0]}': the name is the tuning study of "
                         f"{taken[0].removeprefix(TUNING_PREFIX)} (tuning.spaces); rename the study")
    config["studies"].update(derived)
    return config


def run_selections(config: dict[str, Any], run: Run) -> list[str]:
    """The selections a run trains on: every strategy for the runs (or bare methods)
    `selection.compare_methods` names (all when it is null), the first strategy for the others;
    `none` for the untuned model."""
    strategies = config["selection"]["strategies"]
    if run.method == "base":
        return ["none"]
    compared = config["selection"]["compare_methods"]
    if compared is None or compares(compared, run):
        return strategies
    return strategies[:1]


def compares(entries: list[str], run: Run) -> bool:
    """Whether a list of runs or bare methods (`selection.compare_methods`) names `run`: by its name
    without -s (every seed of it) or by its method."""
    return run._replace(seed=None).name in entries or run.method in entries


def sasrec_trial_name(settings: dict[str, Any]) -> str:
    """A SASRec trial's folder name from its settings on the space's axes, in the space's order:
    `hidden_size64-dropout0.2-lr3e-3` (the learning rate spelled as run names spell it)."""
    return "-".join(f"{key}{number_text(key, value)}" for key, value in settings.items())


def sasrec_candidates(space: dict[str, list]) -> dict[str, dict[str, Any]]:
    """The SASRec trials a `tuning.sasrec` space holds: trial name -> its settings, one per distinct
    name (what `trials` draws from; workflow/tuning.py sasrec_trials)."""
    return {sasrec_trial_name(settings): settings for settings in every_point(space)}
