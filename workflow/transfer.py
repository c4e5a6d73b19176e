"""Cross-domain transfer (config `transfer`): an adapter trained on dataset A evaluated on dataset B.

    transfer:
      - {from: movies, to: games, methods: [sft, dmpo]}

Each entry's runs are trained on `from` as usual (they must be runs of `methods`) and evaluated on
`to`'s test samples, with `to`'s prompts and domain word, under every protocol the run's prompt
supports. Outputs: `results/{to}/transfer/{from}/{run}/{selection}/{split}/` (rules/transfer.smk);
the metrics carry a `trained_on` column (= `from`) beside `dataset` (= `to`), and the summary reads
them against `to`'s own base and popularity rows and against the transferred sft run of the same
entry (workflow/summary.py).

A `methods` entry is a run name of `methods` or a bare method, which stands for each of its runs in
`methods` (as `explanations.methods`). Not transferable:
- `base`: never trained; its rows on `to` are `to`'s own;
- `llara`, `ilora`: their prompt carries `from`'s SASRec item embeddings through a projector trained
  on that table; `to`'s items have no row in it, and another dataset's SASRec table lies in an
  unrelated (unaligned) space, so no item of `to` can be shown to the adapter.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from workflow.config import ConfigError
from workflow.methods import portable
from workflow.runs import HYBRID, Run, config_runs, parse


class Transfer(NamedTuple):
    trained_on: str  # the entry's `from`
    dataset: str  # the entry's `to`: whose samples, prompts and domain word
    run: Run


def _entry_runs(entry: str, runs: list[Run]) -> list[Run]:
    """The runs of `methods` a transfer `methods` entry names: each run of a bare method; a run name
    without -s: the run at every training seed (config `seeds`); else the run itself."""
    if "-" not in entry:
        return [r for r in runs if r.method == entry]
    wanted = parse(entry)
    return [r for r in runs if r == wanted or (wanted.seed is None and r._replace(seed=None) == wanted)]


def _check_method(entry: str, runs: list[Run]) -> list[Run]:
    method = parse(entry).method if "-" in entry else entry  # a run name or a bare method (as runs.resolve reads it)
    if method == "base":
        raise ValueError(f"{entry!r}: the untuned base model is never trained; its rows on the target dataset "
                         "are that dataset's own")
    if not portable(method):
        raise ValueError(f"{entry!r}: {' and '.join(HYBRID)} runs cannot transfer (their prompt carries the source "
                         "dataset's SASRec item embeddings, which have no row for the target's items)")
    found = _entry_runs(entry, runs)
    if not found:
        raise ValueError(f"{entry!r} is not a run of `methods` (runs: {', '.join(r.name for r in runs)})")
    return found


def transfers(config: dict[str, Any]) -> list[Transfer]:
    """Every (from, to, run) the config's `transfer` list asks for, each once, in list order. The
    config is the validated one (defaults filled); a wrong entry raises ConfigError naming
    `transfer[i]` and the entry."""
    runs = config_runs(config)
    datasets = list(config["datasets"])
    out: list[Transfer] = []
    for i, entry in enumerate(config.get("transfer") or []):
        where = f"config key 'transfer[{i}]' ({entry})"
        for side in ("from", "to"):
            if entry[side] not in datasets:
                raise ConfigError(f"{where}: {side} {entry[side]!r} is not a dataset (datasets: {', '.join(datasets)})")
        if entry["from"] == entry["to"]:
            raise ConfigError(f"{where}: from and to are the same dataset {entry['from']!r}; its own runs "
                              "are evaluated on it already")
        for method in entry["methods"]:
            try:
                found = _check_method(method, runs)
            except ValueError as exc:
                raise ConfigError(f"{where}: methods entry {exc}") from None
            out += [Transfer(entry["from"], entry["to"], run) for run in found]
    return list(dict.fromkeys(out))
