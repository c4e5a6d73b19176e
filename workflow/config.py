"""Config loading and validation against config/schema.yaml (defaults filled in).

Snakemake validates the same schema in the Snakefile; this module serves the command line and
tests, and resolves per-dataset settings (top-level `prepare` merged with a dataset's overrides).
"""
from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from workflow.methods import CURRICULA, METHODS, NEGATIVES, QUANTIZATION, portable
from workflow.protocol_table import PROTOCOLS, requestable as requestable_protocols
from workflow.runs import (DEFAULT_PROMPT, GATES, GRID_AXES, PROMPTS, RANKED_STRATEGIES, SELECTIONS, TRAINED,
                           compares, config_runs, distinct_points, expert_rank_problem, over_budget, parse,
                           rank_split_problem, resolve, sasrec_candidates, study_points, tuning_study,
                           with_tuning_studies)

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "config" / "schema.yaml"
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"


class ConfigError(ValueError):
    pass


def load_yaml(text: str) -> Any:
    """YAML through libyaml's C parser when PyYAML has it (10x the pure-Python one; every Snakemake
    start and every stage reads the 670-line schema), the same safe subset either way."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def read_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """config/schema.yaml with its choice lists filled in from the code that declares them, so a
    method, prompt, strategy or axis is named in its declaration only: each `$defs` entry of
    `choices()` takes its enum from there (`$defs.method` every method of workflow/methods.py,
    `$defs.prompt` every prompt of workflow/runs.py, ...), `$defs.explained_run` a pattern of every
    method but the hybrid ones (their prompt needs the surrogate's hooks, which explanations do not
    load), `$defs.claim_side` a method with an optional `@strategy` (a selection strategy), and a
    preference objective without a block of its own gets one of the shared keys
    (`$defs.preference_method`). Each axis of a tuning space takes the item schema of the same study
    grid axis, each key of the SASRec space the `surrogate` block's key's, so their values are typed,
    bounded and coerced as those. A copy: callers may change it."""
    return copy.deepcopy(_filled_schema(str(path), Path(path).stat().st_mtime_ns))


def choices() -> dict[str, list[str]]:
    """The enum of each `$defs` entry that config/schema.yaml leaves to the code, from its declaration."""
    return {
        "method": list(METHODS),
        "prompt": list(PROMPTS),
        "protocol": requestable_protocols(),  # those a prompt supports
        "selection_strategy": list(SELECTIONS),
        "grid_axis": [a.name for a in GRID_AXES],
        "space_axis": [a.name for a in GRID_AXES if a.block],  # a tuning space varies the method's block
        "gate": list(GATES),
        "curriculum": list(CURRICULA),
        "quantization": list(QUANTIZATION),
        # head items need the block's head_share (lpo4rec's); SPRec's one negative is the reference's top-ranked
        "negatives": [name for name, negatives in NEGATIVES.items() if not negatives.head],
        "head_negatives": list(NEGATIVES),
        "ranked_negatives": list(RANKED_STRATEGIES),
        "grounded_metric": list(PROTOCOLS["grounded"].metrics),  # soft.early_stopping validates by it
    }


@functools.lru_cache(maxsize=8)
def _filled_schema(path: str, mtime_ns: int) -> dict[str, Any]:
    """read_schema's work, once per schema file version (every stage start validates a few blocks)."""
    schema = load_yaml(Path(path).read_text())
    for name, enum in choices().items():
        schema["$defs"][name]["enum"] = enum
    explained = [name for name in METHODS if portable(name)]
    schema["$defs"]["explained_run"]["pattern"] = f"^({'|'.join(explained)})(-.*)?$"
    schema["$defs"]["claim_side"]["pattern"] = f"^({'|'.join(METHODS)})(@({'|'.join(SELECTIONS)}))?$"
    for name, declared in METHODS.items():  # a preference objective without keys of its own
        if declared.family == "preference" and name not in schema["properties"]:
            schema["properties"][name] = {"type": "object", "default": {}, "additionalProperties": False,
                                          "description": f"{name}: the shared preference keys",
                                          "properties": dict(schema["$defs"]["preference_method"])}
    # the tuning's spaces: values as a study grid's (an LLM method's axis) or the surrogate's (SASRec's)
    tuning = schema["properties"]["tuning"]["properties"]
    grid = schema["properties"]["studies"]["additionalProperties"]["properties"]["grid"]["properties"]
    tuning["spaces"]["additionalProperties"]["properties"] = {axis: copy.deepcopy(grid[axis])
                                                              for axis in schema["$defs"]["space_axis"]["enum"]}
    surrogate = schema["properties"]["surrogate"]["properties"]
    tuning["sasrec"]["properties"] = {
        key: {"type": "array", "minItems": 1,
              "items": {k: v for k, v in surrogate[key].items() if k not in ("default", "description")}}
        for key in tuning["sasrec"]["propertyNames"]["enum"]}
    return schema


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _message(error: jsonschema.ValidationError) -> str:
    """What is wrong: the validator's message; where no branch of an anyOf / oneOf fits, each
    branch's reason after it (its most relevant error, by jsonschema's best_match), so the message
    says what is missing; a string YAML 1.1 took for a number (`1e-4`) says how to write it."""
    if error.validator == "type" and isinstance(error.instance, str):
        spelled = re.fullmatch(r"([-+]?[0-9]+)(\.[0-9]*)?[eE]([-+]?)([0-9]+)", error.instance)
        if spelled and "number" in _types({"type": error.validator_value}):
            return (f"{error.message} (YAML reads a number with an exponent but no dot as a string: "
                    f"write {spelled[1]}{spelled[2] or '.0'}e{spelled[3] or '+'}{spelled[4]})")
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        return error.message
    branches: dict[int, list[jsonschema.ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    reasons = []
    for _, found in sorted(branches.items()):
        best = jsonschema.exceptions.best_match(found)
        where = ".".join(str(p) for p in best.relative_path)
        reasons.append(f"{where}: {_message(best)}" if where else _message(best))
    return f"{error.message}: {'; or '.join(dict.fromkeys(reasons))}"


def _types(schema: dict[str, Any]) -> set[str]:
    """The JSON types a schema node allows (its `type`, or its `oneOf` / `anyOf` branches')."""
    declared = schema.get("type")
    types = {declared} if isinstance(declared, str) else set(declared or ())
    for branch in schema.get("oneOf", []) + schema.get("anyOf", []):
        types |= _types(branch)
    return types


def _scalar(text: str, types: set[str]) -> Any:
    """A command-line string as the scalar the schema wants: int, float, bool or None (YAML's
    reading; `1e-4`, which YAML 1.1 reads as a string, as a float); the string when none fits."""
    for kind, parse in (("integer", int), ("number", int), ("number", float)):
        if kind in types:
            try:
                return parse(text)
            except ValueError:
                pass
    value = yaml.safe_load(text) if text.strip() else None
    return value if isinstance(value, (bool, type(None))) else text


def coerce(values: Any, schema: dict[str, Any]) -> Any:
    """`values` with every string typed by the schema where the schema does not take a string.
    `--config` gives nested values as strings (`sft={epochs: 2}` reads as {'epochs': '2'}); a string
    that is no such value stays, and validation names its key."""
    if isinstance(values, dict):
        extra = schema.get("additionalProperties")
        return {key: coerce(value, schema.get("properties", {}).get(key, extra if isinstance(extra, dict) else {}))
                for key, value in values.items()}
    if isinstance(values, list):
        return [coerce(value, schema.get("items", {})) for value in values]
    types = _types(schema)
    if isinstance(values, str) and types and "string" not in types:
        return _scalar(values, types)
    return values


def _update(target: dict[str, Any], source: dict[str, Any]) -> None:
    """Nested dicts merged as Snakemake merges `--config` into the config files."""
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _update(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def validate(config: dict[str, Any], schema_path: str | Path = SCHEMA_PATH,
             overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate `config` in place (filling defaults) and return it; errors name the key.
    `overrides` (Snakemake's `--config` and `--configfile` values, already merged into `config`)
    are merged again typed by the schema (`coerce`), so `--config 'sft={epochs: 2}'` works."""
    schema = read_schema(schema_path)
    if overrides:
        _update(config, coerce(dict(overrides), schema))
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    lines = [f"config key '{_key_path(e)}': {_message(e)}" for e in errors]
    if not errors:
        lines += _run_name_errors(config)
        # A dataset's `prepare` overrides are checked as merged with the top-level block, so a
        # wrong key or type there is named with its full path too.
        prepare_schema = schema["properties"]["prepare"]
        lines += _ratio_errors("prepare", config["prepare"])
        for name in config["datasets"]:
            merged = prepare_settings(config, name)
            found = list(jsonschema.Draft202012Validator(prepare_schema).iter_errors(merged))
            for e in found:
                where = ".".join(str(p) for p in e.absolute_path)
                lines.append(f"config key 'datasets.{name}.prepare.{where}': {_message(e)}")
            if not found and "ratio" in (config["datasets"][name].get("prepare") or {}):
                lines += _ratio_errors(f"datasets.{name}.prepare", merged)
        lines += _setting_errors(config)
    if not lines:
        try:
            with_tuning_studies(config)  # each tuned method's study, derived here so every reader sees it
        except ValueError as exc:
            lines.append(str(exc))
    if not lines:
        lines += _study_errors(config)
    if not lines:
        lines += _compare_errors(config)
    if lines:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    return config


def _run_name_errors(config: dict[str, Any]) -> list[str]:
    """`methods` entries that are no run name by workflow/runs.py's grammar (its one definition), or
    name a run that cannot train: a budget above the selection's, an iLoRA rank its experts do not
    split."""
    errors = []
    for i, entry in enumerate(config["methods"]):
        try:
            if entry != "base":  # base resolves the other entries: their errors are their own
                for run in resolve(entry, config):
                    problems = [over_budget(run.budget, config) if run.budget else None,
                                expert_rank_problem(run, config)]
                    errors += [f"config key 'methods[{i}]': run {run.name!r}: {p}" for p in problems if p]
        except ValueError as exc:
            reason = str(exc).removeprefix("config key 'methods': ")
            errors.append(f"config key 'methods[{i}]': {reason}")
    return errors


def _ratio_errors(where: str, prepare: dict[str, Any]) -> list[str]:
    """A split ratio without a positive sum (workflow/prepare.py resolve_settings' rule)."""
    if sum(prepare["ratio"]) > 0:
        return []
    return [f"config key '{where}.ratio': need non-negative parts with a positive sum, got {prepare['ratio']}"]


def _setting_errors(config: dict[str, Any]) -> list[str]:
    """Settings the schema cannot check alone: metric names against the protocols that report them
    (`_metric_errors`), explained run names by the grammar, iLoRA's rank split, the tuning's budget
    against the selection's."""
    tuning = config["tuning"]
    errors = _metric_errors("tuning.metrics", tuning["metrics"], [tuning["protocol"]], "tuning.protocol")
    reported = PROTOCOLS[tuning["protocol"]].metrics
    if tuning["metric"] not in reported:  # the selection reads it: it must be there
        errors.append(f"config key 'tuning.metric': {tuning['metric']!r} is not a metric of tuning.protocol "
                      f"{tuning['protocol']} (its metrics: {', '.join(reported)})")
    for name, study in config["studies"].items():
        errors += _metric_errors(f"studies.{name}.metrics", study["metrics"], study["protocols"],
                                 "the study's protocols")
    for i, entry in enumerate(config["explanations"]["methods"]):
        try:
            if "-" in entry:
                parse(entry)
        except ValueError as exc:
            errors.append(f"config key 'explanations.methods.{i}': {exc}")
    if problem := rank_split_problem(config["ilora"]):
        errors.append(f"config key 'ilora.lora_r': {problem}")
    if tuning["spaces"] and (problem := over_budget(tuning["budget"], config)):  # every trial's -n
        errors.append(f"config key 'tuning.budget': {problem}")
    return errors


def _metric_errors(where: str, metrics: list[str], protocols: list[str], what: str) -> list[str]:
    """A table's metrics (a study's, the tuned table's): each one some protocol reports, and one at
    least that `protocols` report (the table shows each under the protocols that report it, so a
    metric of another protocol, such as the default auc beside a catalogue study, is left out)."""
    reported = tuple(dict.fromkeys(m for p in protocols for m in PROTOCOLS[p].metrics))
    known = {m for p in PROTOCOLS.values() for m in p.metrics}
    of = f"{what} {', '.join(protocols)}"
    errors = [f"config key '{where}.{i}': {metric!r} is not a metric (the metrics of {of}: {', '.join(reported)})"
              for i, metric in enumerate(metrics) if metric not in known]
    if not errors and not set(metrics) & set(reported):
        errors.append(f"config key '{where}': none of {', '.join(metrics)} is a metric of {of} "
                      f"(theirs: {', '.join(reported)})")
    return errors


def _compare_errors(config: dict[str, Any]) -> list[str]:
    """`selection.compare_methods` entries that can name no run (as workflow/runs.py run_selections
    reads them): a bare method that is no trained method, or a run name that is malformed or names
    no run of `methods` nor a tuning trial (its name without -s). A trained method without a run in
    `methods` stays allowed: an overlay may change `methods` and keep the default's list."""
    where = "config key 'selection.compare_methods.{}'"
    trained = [run for run in config_runs(config) if run.method != "base"]
    trials = [run for method in config["tuning"]["spaces"] for _, run in study_points(tuning_study(method), config)]
    errors = []
    for i, entry in enumerate(config["selection"]["compare_methods"] or []):
        if "-" not in entry:
            if entry not in TRAINED:
                errors.append(f"{where.format(i)}: {entry!r} is not a trained method (trained: {', '.join(TRAINED)})")
            continue
        try:
            parse(entry)
        except ValueError as exc:
            errors.append(f"{where.format(i)}: {exc}")
            continue
        if not any(compares([entry], run) for run in trained + trials):
            names = dict.fromkeys(r._replace(seed=None).name for r in trained)
            errors.append(f"{where.format(i)}: {entry!r} is no run of `methods` nor a tuning trial "
                          f"(runs of `methods`, without -s: {', '.join(names) or 'none'})")
    return errors


def _study_errors(config: dict[str, Any]) -> list[str]:
    """Studies whose runs cannot be drawn or trained (workflow/runs.py study_points: an axis none of
    its methods takes, a budget above the selection's, an iLoRA rank its experts do not split, more
    trials than distinct runs), the tuning's named by its keys: `tuning.trials` against each space's
    distinct runs (the LLM methods' and SASRec's), a trial by `tuning.spaces.<method>`."""
    tuning = config["tuning"]
    spaces = {tuning_study(method): method for method in tuning["spaces"]}
    errors = []
    counts = {f"tuning.spaces.{method}": len(distinct_points(name, method, config))
              for name, method in spaces.items()}
    if tuning["sasrec"]:
        counts["tuning.sasrec"] = len(sasrec_candidates(tuning["sasrec"]))
    errors += [f"config key 'tuning.trials': {tuning['trials']} trials, more than the {count} distinct runs of "
               f"{where} (every method gets the same number)"
               for where, count in counts.items() if count < tuning["trials"]]
    too_few = bool(errors)
    for name in config["studies"]:
        if too_few and name in spaces:
            continue  # its trials cannot be drawn: named above
        try:
            study_points(name, config)
        except ValueError as exc:
            message = str(exc)
            if name in spaces:  # a tuning trial: named by its space
                message = message.replace(f"config key 'studies.{name}.grid'",
                                          f"config key 'tuning.spaces.{spaces[name]}'", 1)
            errors.append(message)
    return errors


def validate_block(block: str, settings: dict[str, Any], schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Validate one top-level block (e.g. `prepare` given to a stage's command line) and fill its
    defaults; returns a copy. Errors name the key as `block.key`."""
    full = read_schema(schema_path)
    schema = {"$defs": full["$defs"], **full["properties"][block]}  # a block's $refs resolve against $defs
    settings = copy.deepcopy(settings)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(settings), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"config key '{'.'.join([block, *map(str, e.absolute_path)])}': {_message(e)}" for e in errors]
        raise ConfigError(f"invalid {block} settings:\n  " + "\n  ".join(lines))
    return settings


RUN_KEYS = ("domain", "prompt", "budget")


def stage_settings(spec: dict[str, Any], blocks: dict[str, str]) -> dict[str, Any]:
    """The `--spec` of an LLM stage: each key named in `blocks` (spec key -> schema block) validated
    with its defaults filled, plus what the run's name says (workflow/runs.py): `domain` (the
    dataset's item word, default "item"), `prompt` (one of PROMPTS, default DEFAULT_PROMPT) and
    `budget` (train on a nested subset of that many selected samples; default None = all)."""
    unknown = set(spec) - set(blocks) - set(RUN_KEYS)
    if unknown:
        raise KeyError(f"--spec: unknown keys {sorted(unknown)} (expected {', '.join([*blocks, *RUN_KEYS])})")
    out: dict[str, Any] = {key: validate_block(block, dict(spec.get(key) or {})) for key, block in blocks.items()}
    out["domain"] = spec.get("domain") or "item"
    out["prompt"] = spec.get("prompt") or DEFAULT_PROMPT
    if out["prompt"] not in PROMPTS:
        raise ValueError(f"--spec: prompt {out['prompt']!r} is not one of {', '.join(PROMPTS)}")
    out["budget"] = spec.get("budget")
    if out["budget"] is not None and (not isinstance(out["budget"], int) or out["budget"] < 1):
        raise ValueError(f"--spec: budget must be a positive integer or null, got {out['budget']!r}")
    return out


def load(path: str | Path = DEFAULT_CONFIG) -> dict[str, Any]:
    path = Path(path)
    try:
        config = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return validate(config)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def prepare_settings(config: dict[str, Any], dataset: str) -> dict[str, Any]:
    """The top-level `prepare` block with the dataset's own `prepare` overrides applied."""
    merged = copy.deepcopy(config.get("prepare", {}))
    overrides = config["datasets"][dataset].get("prepare", {}) or {}
    unknown = sorted(set(overrides) - set(merged))
    if unknown:
        raise ConfigError(f"config key 'datasets.{dataset}.prepare.{unknown[0]}': not a prepare setting")
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
