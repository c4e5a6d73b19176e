"""The one declaration per method (workflow/methods.py) against what is derived from it and what
still lists methods by hand: config/schema.yaml's blocks and enums, the losses' objectives."""
import yaml

from workflow import runs
from workflow.config import SCHEMA_PATH
from workflow.llm import losses, preference
from workflow.methods import METHODS

SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]


def test_every_method_has_its_schema_block_and_is_in_the_enums():
    assert set(METHODS) <= set(SCHEMA)
    study = SCHEMA["studies"]["additionalProperties"]["properties"]
    assert set(study["methods"]["items"]["enum"]) == set(METHODS)
    assert set(study["reference"]["enum"]) == set(METHODS)
    # explanations: every trained method but the hybrid ones (their prompt needs the surrogate's hooks)
    explained = SCHEMA["explanations"]["properties"]["methods"]["items"]["pattern"]
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
