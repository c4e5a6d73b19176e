"""Config loading and validation against config/schema.yaml (defaults filled in).

Snakemake validates the same schema in the Snakefile; this module serves the command line and
tests, and resolves per-dataset settings (top-level `prepare` merged with a dataset's overrides).
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from workflow.methods import CURRICULA, METHODS, NEGATIVES, QUANTIZATION
from workflow.protocol_table import requestable as requestable_protocols
from workflow.runs import (DEFAULT_PROMPT, GATES, GRID_AXES, PROMPTS, RANKED_STRATEGIES, SELECTIONS, resolve,
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
    (`$defs.preference_method`). A copy: callers may change it."""
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
    }


@functools.lru_cache(maxsize=8)
def _filled_schema(path: str, mtime_ns: int) -> dict[str, Any]:
    """read_schema's work, once per schema file version (every stage start validates a few blocks)."""
    schema = load_yaml(Path(path).read_text())
    for name, enum in choices().items():
        schema["$defs"][name]["enum"] = enum
    explained = [name for name, declared in METHODS.items() if declared.family != "hybrid"]
    schema["$defs"]["explained_run"]["pattern"] = f"^({'|'.join(explained)})(-.*)?$"
    schema["$defs"]["claim_side"]["pattern"] = f"^({'|'.join(METHODS)})(@({'|'.join(SELECTIONS)}))?$"
    for name, declared in METHODS.items():  # a preference objective without keys of its own
        if declared.family == "preference" and name not in schema["properties"]:
            schema["properties"][name] = {"type": "object", "default": {}, "additionalProperties": False,
                                          "description": f"{name}: the shared preference keys",
                                          "properties": dict(schema["$defs"]["preference_method"])}
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
    lines = [f"config key '{_key_path(e)}': {e.message}" for e in errors]
    if not errors:
        lines += _run_name_errors(config)
        # A dataset's `prepare` overrides are checked as merged with the top-level block, so a
        # wrong key or type there is named with its full path too.
        prepare_schema = schema["properties"]["prepare"]
        for name in config["datasets"]:
            merged = prepare_settings(config, name)
            for e in jsonschema.Draft202012Validator(prepare_schema).iter_errors(merged):
                where = ".".join(str(p) for p in e.absolute_path)
                lines.append(f"config key 'datasets.{name}.prepare.{where}': {e.message}")
    if not lines:
        try:
            with_tuning_studies(config)  # each tuned method's study, derived here so every reader sees it
        except ValueError as exc:
            lines.append(str(exc))
    if lines:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    return config


def _run_name_errors(config: dict[str, Any]) -> list[str]:
    """`methods` entries that are no run name by workflow/runs.py's grammar (its one definition)."""
    errors = []
    for i, entry in enumerate(config["methods"]):
        try:
            if entry != "base":  # base resolves the other entries: their errors are their own
                resolve(entry, config)
        except ValueError as exc:
            reason = str(exc).removeprefix("config key 'methods': ")
            errors.append(f"config key 'methods[{i}]': {reason}")
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
        lines = [f"config key '{'.'.join([block, *map(str, e.absolute_path)])}': {e.message}" for e in errors]
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
