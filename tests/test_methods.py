"""The one declaration per method (workflow/methods.py) against what is derived from it and what
still lists methods by hand: config/schema.yaml's blocks and enums, the losses' objectives."""
import re

import yaml

from workflow import runs
from workflow.config import SCHEMA_PATH, read_schema
from workflow.llm import losses, preference
from workflow.methods import METHODS

SCHEMA = read_schema()["properties"]  # the method names filled in from the declarations


def test_the_schema_names_methods_only_through_the_declarations():
    """config/schema.yaml lists no method by hand: every key that takes a method refers to
    `$defs.method` (or `$defs.explained_run`), which read_schema fills from workflow/methods.py."""
    text = SCHEMA_PATH.read_text()
    raw = yaml.safe_load(text)
    assert "enum" not in raw["$defs"]["method"] and "pattern" not in raw["$defs"]["explained_run"]
    enums = re.findall(r"enum: \[([^\]]*)\]", text) + re.findall(r"pattern: \"([^\"]*)\"", text)
    assert not [e for e in enums if "dmpo" in e]  # no enum or pattern lists the methods by hand
    assert read_schema()["$defs"]["method"]["enum"] == list(METHODS)


def test_every_method_has_its_schema_block_and_is_in_the_enums():
    assert set(METHODS) <= set(SCHEMA)
    study = SCHEMA["studies"]["additionalProperties"]["properties"]
    defs = read_schema()["$defs"]
    assert study["methods"]["items"]["$ref"] == study["reference"]["$ref"] == "#/$defs/method"
    assert set(defs["method"]["enum"]) == set(METHODS)
    # explanations: every trained method but the hybrid ones (their prompt needs the surrogate's hooks)
    explained = defs["explained_run"]["pattern"]
    assert set(explained.removeprefix("^(").split(")")[0].split("|")) == {m for m, d in METHODS.items()
                                                                          if d.family != "hybrid"}


def test_the_declarations_drive_the_sets_and_the_trainer():
    assert runs.TRAINED == tuple(METHODS) and preference.METHODS == runs.PREFERENCE
    for name, declared in METHODS.items():
        assert (declared.objective is not None) == (declared.family == "preference"), name
        if declared.objective is not None:
            assert declared.objective in losses.OBJECTIVES, name
        assert not (declared.shares_negatives or declared.state) or declared.family == "preference", name
    # a preference block on the listed candidates shares the schema's preference_method keys
    for name in runs.PREFERENCE:
        assert ("beta" in SCHEMA[name]["properties"]) != METHODS[name].online_reference, name


def test_each_objective_declares_the_block_keys_it_takes():
    """methods.OBJECTIVE_SETTINGS names, per objective the preference trainer calls, keyword arguments
    of its losses function, each read from a key of every block that trains it (or a `form` of it)."""
    import inspect

    from workflow.config import validate_block
    from workflow.methods import OBJECTIVE_SETTINGS

    trained = set()
    for name, declared in METHODS.items():
        if declared.family != "preference" or declared.online_reference:  # rere: catalogue_rl.py's own loss
            continue
        block = validate_block(name, {})
        for objective in (declared.objective, *dict(declared.forms).values()):
            trained.add(objective)
            parameters = inspect.signature(losses.OBJECTIVES[objective]).parameters
            for argument, (key, kind) in OBJECTIVE_SETTINGS[objective].items():
                assert argument in parameters and key in block, (name, objective, argument, key)
                assert isinstance(kind(block[key]), kind)
        for form, objective in declared.forms:
            assert preference.objective_of(name, {"form": form}) == objective
        assert preference.objective_of(name, {}) == declared.objective
    assert trained == set(OBJECTIVE_SETTINGS)


def test_hybrid_runs_are_neither_transferred_nor_explained():
    from workflow.methods import portable

    assert [m for m in METHODS if not portable(m)] == list(runs.HYBRID)
