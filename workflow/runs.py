"""LLM run names: what a run is, read from its name alone.

A run is one LLM method under one prompt, with optional overrides of its config block:

    {method}-{prompt}[-k{negatives}][-e{epochs}][-n{budget}]

e.g. `sft-open`, `base-candidate`, `dmpo-open-k15`, `sft-candidate-e3-n512`. The name is the
`method` column of every metrics table and the folder of the run's outputs, so two runs that differ
in anything that changes their result never share a name, and a reader of the summary sees the
prompt of every row. Overrides:
- `k`: negatives per sample (preference methods);
- `e`: training epochs;
- `n`: train on a seeded subset of `n` samples of the selection (the first n of one fixed seeded
  permutation, so n = 128 lies inside n = 512: learning-curve points differ only by the added data).

A preference run starts from (and is referenced against) the sft run of the same prompt and budget,
with sft's own epochs: `dmpo-open-e3-n512` starts from `sft-open-n512`.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

PROMPTS = ("candidate", "open")
TRAINED = ("sft", "dmpo", "sdpo", "dynamicpo")
PREFERENCE = ("dmpo", "sdpo", "dynamicpo")
METHODS = ("base", *TRAINED)
# The protocols a prompt supports beside likelihood: generation names one of the listed candidates,
# grounded ranking embeds a free answer to the open prompt.
PROMPT_PROTOCOLS = {"candidate": ("likelihood", "generation"), "open": ("likelihood", "grounded")}

NAME = re.compile(r"^(?P<method>[a-z]+)-(?P<prompt>[a-z]+)(?:-k(?P<k>[0-9]+))?(?:-e(?P<epochs>[0-9]+))?"
                  r"(?:-n(?P<budget>[0-9]+))?$")


class Run(NamedTuple):
    method: str
    prompt: str
    k: int | None = None
    epochs: int | None = None
    budget: int | None = None

    @property
    def name(self) -> str:
        parts = [self.method, self.prompt]
        parts += [f"{flag}{value}" for flag, value in (("k", self.k), ("e", self.epochs), ("n", self.budget))
                  if value is not None]
        return "-".join(parts)

    def sft(self) -> "Run":
        """The sft run a preference run starts from (same prompt and budget)."""
        return Run("sft", self.prompt, budget=self.budget)

    def protocols(self, wanted) -> list[str]:
        """The wanted protocols this run's prompt supports, in the order given."""
        return [p for p in wanted if p in PROMPT_PROTOCOLS[self.prompt]]


def parse(name: str) -> Run:
    """The run a name stands for; a malformed name raises ValueError naming what is wrong."""
    match = NAME.match(name)
    if not match:
        raise ValueError(f"run name {name!r} is not {{method}}-{{prompt}}[-k<int>][-e<int>][-n<int>]"
                         f" (e.g. sft-open, dmpo-candidate-k7)")
    method, prompt = match["method"], match["prompt"]
    if method not in METHODS:
        raise ValueError(f"run name {name!r}: unknown method {method!r} (known: {', '.join(METHODS)})")
    if prompt not in PROMPTS:
        raise ValueError(f"run name {name!r}: unknown prompt {prompt!r} (known: {', '.join(PROMPTS)})")
    values = {key: int(match[key]) for key in ("k", "epochs", "budget") if match[key] is not None}
    if any(v < 1 for v in values.values()):
        raise ValueError(f"run name {name!r}: k, e and n must be positive")
    if method == "base" and values:
        raise ValueError(f"run name {name!r}: the untuned base model takes no -k/-e/-n")
    if "k" in values and method not in PREFERENCE:
        raise ValueError(f"run name {name!r}: -k (negatives) applies to {', '.join(PREFERENCE)} only")
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


def config_runs(config: dict[str, Any]) -> list[Run]:
    """Every run of the config's `methods` list, each once, in list order."""
    runs = [run for entry in config["methods"] for run in resolve(entry, config)]
    return list(dict.fromkeys(runs))


def block(run: Run, config: dict[str, Any]) -> dict[str, Any]:
    """The run's training settings: its method's config block with the name's -k and -e (the
    prompt and -n budget travel beside the block, as every LLM stage's `prompt` and `budget`)."""
    settings = {key: value for key, value in config[run.method].items() if key != "prompt"}
    for key in ("k", "epochs"):
        if getattr(run, key) is not None:
            settings[key] = getattr(run, key)
    return settings
