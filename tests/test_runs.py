"""Run names (workflow/runs.py) and the nested training budgets they name (workflow/selection/random_subset.py)."""
from __future__ import annotations

import itertools
import re

import pandas as pd
import pytest

from workflow import runs
from workflow.config import read_schema, validate
from workflow.llm.data import read_training_samples
from workflow.selection.budget import run_budget
from workflow.selection import nested_subset


@pytest.mark.parametrize("name, expected", [
    ("sft-open", runs.Run("sft", "open")),
    ("base-candidate", runs.Run("base", "candidate")),
    ("dmpo-open-k15", runs.Run("dmpo", "open", k=15)),
    ("sft-candidate-e3-n512", runs.Run("sft", "candidate", epochs=3, budget=512)),
    ("dynamicpo-open-k7-e2-n128", runs.Run("dynamicpo", "open", k=7, epochs=2, budget=128)),
    ("ilora-open-x8-grandom-n256", runs.Run("ilora", "open", budget=256, n_experts=8, gate="random")),
    ("llara-candidate", runs.Run("llara", "candidate")),
    ("soft-open-a0.1-n256", runs.Run("soft", "open", budget=256, alpha=0.1)),
    ("soft-open-a100", runs.Run("soft", "open", alpha=100.0)),
    ("sft-open-s43", runs.Run("sft", "open", seed=43)),
    ("dmpo-open-k7-e2-n256-s0", runs.Run("dmpo", "open", k=7, epochs=2, budget=256, seed=0)),
    ("ilora-open-x8-grandom-n256-s8", runs.Run("ilora", "open", budget=256, n_experts=8, gate="random", seed=8)),
    ("sprec-open-r2-n256", runs.Run("sprec", "open", budget=256, rounds=2)),
    ("dmpo-open-k3-b0.1-n256", runs.Run("dmpo", "open", k=3, budget=256, beta=0.1)),
    ("sprec-open-b2-r2", runs.Run("sprec", "open", rounds=2, beta=2.0)),
    ("dmpo-open-k3-b0.1-lr5e-4-n256", runs.Run("dmpo", "open", k=3, budget=256, beta=0.1, lr=5e-4)),
    ("sft-open-lr1.5e-4-e2", runs.Run("sft", "open", epochs=2, lr=1.5e-4)),
    ("ilora-open-lr2e-5-x4", runs.Run("ilora", "open", n_experts=4, lr=2e-5)),
    ("sft-open-lr1e-3-rank16-n256", runs.Run("sft", "open", lr=1e-3, lora_r=16, budget=256)),
    ("ilora-open-rank8-x4", runs.Run("ilora", "open", lora_r=8, n_experts=4)),
])
def test_names_round_trip(name, expected):
    assert runs.parse(name) == expected and expected.name == name


@pytest.mark.parametrize("name, message", [
    ("sft", "is not"), ("sft-open-n", "is not"), ("sft-open-n128-e3", "is not"),  # fixed order
    ("ipo-open", "unknown method"), ("sft-closed", "unknown prompt"), ("sft-open-k3", "-k"),
    ("base-open-n128", "base model"), ("sft-open-n0", "positive"),
    ("llara-open-x4", "ilora only"), ("ilora-open-gsideways", "unknown gate"), ("sft-open-a1", "soft only"),
    ("sft-open-s43-n128", "is not"), ("sft-open-s", "is not"), ("base-open-s43", "base model"),
    ("dmpo-open-r2", "sprec only"), ("sprec-open-r0", "positive"), ("sprec-open-n256-r2", "is not"),
    ("sft-open-b0.1", "-b"), ("dmpo-open-b0", "-b .beta. must be positive"), ("dmpo-open-b0.1-k3", "is not"),
    ("dmpo-open-lr5e-04", "-lr5e-4"), ("dmpo-open-lr50e-5", "is not"), ("dmpo-open-lr0.0005", "is not"),
    ("dmpo-open-lr5.0e-4", "is not"), ("base-open-lr5e-4", "base model"), ("sft-open-e2-lr1e-4", "is not"),
])
def test_malformed_names_say_what_is_wrong(name, message):
    with pytest.raises(ValueError, match=message):
        runs.parse(name)


def valid_names() -> list[str]:
    """Names of every method and prompt: bare, with each flag it takes alone, and with all of them."""
    values = {"k": 3, "n_experts": 4, "gate": "uniform", "alpha": 0.5, "rounds": 2, "epochs": 2, "budget": 64,
              "seed": 43, "beta": 0.25, "lr": 3e-4, "lora_r": 8}
    names = []
    for method, prompt in itertools.product(runs.METHODS, runs.PROMPTS):
        fields = [a.name for a in runs.FLAG_AXES if method in a.methods]
        for chosen in [[]] + [[f] for f in fields] + [fields]:
            names.append(runs.Run(method, prompt, **{f: values[f] for f in chosen}).name)
    return names


@pytest.mark.parametrize("methods", [["base"], ["sft"], list(runs.PREFERENCE), list(runs.HYBRID), ["soft"],
                                     list(runs.TRAINED)])
def test_wildcard_pattern_matches_the_names_of_its_methods_only(methods):
    pattern = re.compile(runs.wildcard_pattern(methods))
    names = valid_names()
    assert len(names) > 50
    for name in names:
        assert bool(pattern.fullmatch(name)) == (runs.parse(name).method in methods), name
    # names parse() refuses for their grammar (not only for a value: -n0 is refused later)
    for bad in ["sft", "sft-open-n128-e3", "ipo-open", "sft-closed", "sft-open-k3", "base-open-n128",
                "llara-open-x4", "ilora-open-gsideways", "sft-open-a1", "sft-open-s43-n128", "base-open-s43",
                "soft-open-a1.", "dmpo-open-s", "base-open-lr1e-4", "sft-open-lr0.001"]:
        with pytest.raises(ValueError):
            runs.parse(bad)
        assert not pattern.fullmatch(bad), bad


def test_the_axis_declaration_drives_the_parser_the_wildcards_and_the_schemas_grid():
    """One declaration per axis (runs.RUN_AXES): the name grammar, the Run fields, the wildcard
    pattern's flags, config/schema.yaml's study grid keys and `x` enum, and their value types agree."""
    assert runs.Run._fields == ("method", "prompt", *(a.name for a in runs.FLAG_AXES))
    assert [name for name in runs.NAME.groupindex if name not in ("method", "prompt")] == list(runs.Run._fields[2:])
    for a in runs.FLAG_AXES:  # each flag's letter in the pattern of exactly the methods it applies to
        for method in runs.TRAINED:
            flag = re.compile(runs.wildcard_pattern([method])).pattern
            value = "(?:" + "|".join(a.choices) + ")" if a.choices else a.value  # -r and -rank: the value tells
            assert (f"(?:-{a.flag}{value})?" in flag) == (method in a.methods), (method, a.name)
    filled = read_schema()  # $defs filled in from the declarations (the prompts' enum from runs.PROMPTS)
    study = filled["properties"]["studies"]["additionalProperties"]["properties"]
    grid = study["grid"]["properties"]
    assert list(grid) == [a.name for a in runs.GRID_AXES]
    assert study["x"]["$ref"] == "#/$defs/grid_axis"
    assert filled["$defs"]["grid_axis"]["enum"] == [a.name for a in runs.GRID_AXES]
    for a in runs.GRID_AXES:
        items = grid[a.name]["items"]
        if "$ref" in items:  # a shared definition (the prompt): read it where it is defined
            items = filled["$defs"][items["$ref"].removeprefix("#/$defs/")]
        assert items["type"] == {int: "integer", float: "number", str: "string"}[a.kind], a.name
        assert items.get("enum", []) == list(a.choices), a.name
        assert items.get("minimum", items.get("exclusiveMinimum")) == {int: 1, float: 0, str: None}[a.kind], a.name
    # every block-overriding axis names a key of each block it applies to
    schema = read_schema()["properties"]  # with the blocks filled in for declared methods
    for a in runs.FLAG_AXES:
        if a.block:
            for method in a.methods:
                assert a.name in schema[method]["properties"], (method, a.name)


def test_sprec_rounds_chain_down_to_the_sft_run():
    """Round r starts from round r - 1 (the config's own rounds keep the plain name), round 1 from
    the sft run; other methods have no previous round."""
    config = {"sprec": {"prompt": "open", "rounds": 3}}  # the blocks previous_round reads
    chain, run = [], runs.parse("sprec-open-n256-s43")
    while run is not None:
        chain.append(run.name)
        run = runs.previous_round(run, config)
    assert chain == ["sprec-open-n256-s43", "sprec-open-r2-n256-s43", "sprec-open-r1-n256-s43"]
    assert runs.block(runs.parse("sprec-open-r2"), config)["rounds"] == 2
    config = {"sprec": {"prompt": "open", "rounds": 1}}
    assert runs.previous_round(runs.parse("sprec-open-r2"), config) == runs.parse("sprec-open")
    assert runs.previous_round(runs.parse("sprec-open"), config) is None
    assert runs.previous_round(runs.parse("dmpo-open"), config) is None


def test_a_preference_run_starts_from_the_sft_run_of_its_prompt_and_budget():
    assert runs.parse("dmpo-open-k7-e3-n256").sft() == runs.Run("sft", "open", budget=256)
    assert runs.parse("sdpo-candidate").sft().name == "sft-candidate"
    assert runs.parse("soft-open-a0.1-n256-s43").sft().name == "sft-open-n256-s43"  # and seed


def test_seeds_train_every_trained_run_per_seed_and_keep_the_config_seeds_names():
    config = config_with(["base", "sft-open-n256", "dmpo-open-n256", "llara-open-s9"], seed=42, seeds=[42, 43])
    names = [r.name for r in runs.config_runs(config)]
    assert names == ["base-open", "sft-open-n256", "sft-open-n256-s43", "dmpo-open-n256", "dmpo-open-n256-s43",
                     "llara-open-s9"]  # a name that says its seed stays one run
    assert [runs.run_seed(r, config) for r in runs.config_runs(config)][1:3] == [42, 43]
    assert runs.config_seeds(config) == [42, 43]
    plain = config_with(["base", "sft-open-n256", "dmpo-open-n256"], seed=42)
    only_seed = config_with(["base", "sft-open-n256", "dmpo-open-n256"], seed=42, seeds=[42])
    assert runs.config_runs(plain) == runs.config_runs(only_seed) and runs.config_seeds(plain) == [42]
    other = config_with(["sft-open"], seed=42, seeds=[7, 8])  # the config's seed need not be among them
    assert [r.name for r in runs.config_runs(other)] == ["sft-open-s7", "sft-open-s8"]


def test_each_prompt_supports_likelihood_and_one_free_answer_protocol():
    wanted = ["likelihood", "generation", "grounded"]
    assert runs.parse("sft-open").protocols(wanted) == ["likelihood", "grounded"]
    assert runs.parse("base-candidate").protocols(wanted) == ["likelihood", "generation"]


def config_with(methods, **blocks):
    config = {"datasets": {"d": {"format": "recbole-atomic", "path": "embedded"}}, "methods": methods, **blocks}
    return validate(config)


def test_bare_methods_take_their_blocks_prompt_and_base_every_prompt_used():
    config = config_with(["base", "sft", "dmpo", "sft-candidate-n128"], sft={"prompt": "open"},
                         dmpo={"prompt": "open", "k": 5})
    names = [r.name for r in runs.config_runs(config)]
    assert names == ["base-candidate", "base-open", "sft-open", "dmpo-open", "sft-candidate-n128"]
    only_base = config_with(["base"])
    assert [r.name for r in runs.config_runs(only_base)] == ["base-candidate"]


def test_block_applies_the_names_overrides_and_leaves_the_rest():
    config = config_with(["dmpo"], dmpo={"beta": 0.5, "k": 3, "epochs": 1, "prompt": "open"})
    block = runs.block(runs.parse("dmpo-open-k7-e2"), config)
    assert block["k"] == 7 and block["epochs"] == 2 and block["beta"] == 0.5 and "prompt" not in block
    assert runs.block(runs.parse("dmpo-open"), config)["k"] == 3


def test_schema_rejects_a_malformed_methods_entry():
    from workflow.config import ConfigError

    with pytest.raises(ConfigError, match="methods"):
        config_with(["sft-sideways"])


def test_nested_subsets_are_seeded_and_grow_by_adding_samples():
    ids = [f"s{i:03d}" for i in range(100)]
    small, large = nested_subset(ids, 10, seed=1), nested_subset(ids, 40, seed=1)
    assert len(small) == 10 and len(large) == 40 and set(small) <= set(large)
    assert small == sorted(small) and nested_subset(ids[::-1], 10, seed=1) == small  # order-free
    assert nested_subset(ids, 10, seed=2) != small
    assert nested_subset(ids, 500, seed=1) == ids


def test_training_samples_with_a_budget(tmp_path):
    samples = pd.DataFrame({"sample_id": [f"t{i}" for i in range(8)] + ["v0"], "split": ["train"] * 8 + ["valid"],
                            "history": [["a"]] * 9, "target": ["b"] * 9, "candidates": [["a", "b"]] * 9})
    samples.to_parquet(tmp_path / "samples.parquet")
    pd.DataFrame({"sample_id": [f"t{i}" for i in range(6)]}).to_parquet(tmp_path / "selection.parquet")
    # the -n step (workflow.selection.budget) writes the subset the stages then read as a selection
    run_budget(tmp_path / "selection.parquet", 4, 3, tmp_path / "selection-n4.parquet")
    picked = read_training_samples(tmp_path / "samples.parquet", tmp_path / "selection-n4.parquet")
    assert picked["sample_id"].tolist() == nested_subset([f"t{i}" for i in range(6)], 4, seed=3)
    assert len(read_training_samples(tmp_path / "samples.parquet", tmp_path / "selection.parquet")) == 6
    with pytest.raises(ValueError, match="selection holds 6"):
        run_budget(tmp_path / "selection.parquet", 7, 3, tmp_path / "selection-n7.parquet")
    assert not (tmp_path / "selection-n7.parquet").exists()


def test_grid_points_reuse_main_runs_and_label_every_axis():
    config = config_with(["ilora-open-n256"], ilora={"prompt": "open", "n_experts": 4},
                         llara={"prompt": "open"}, selection={"budget": 1024})
    labels, run = runs.grid_point("ilora", {"prompt": "open", "budget": 256, "n_experts": 4}, config)
    assert run.name == "ilora-open-n256"  # the main run: n_experts equals the block's
    assert labels["n_experts"] == 4 and labels["gate"] == "sequence" and labels["k"] is None
    labels, run = runs.grid_point("ilora", {"budget": 256, "gate": "uniform"}, config)
    assert run.name == "ilora-open-guniform-n256" and labels["n_experts"] == 4
    labels, run = runs.grid_point("llara", {"budget": 256, "n_experts": 8}, config)
    assert run.name == "llara-open-n256" and labels["n_experts"] is None  # the axis does not apply
    with pytest.raises(ValueError, match="selection.budget"):
        runs.grid_point("ilora", {"budget": 4096}, config)
    config = config_with(["grpo-open-n256"], grpo={"prompt": "open", "k": 3, "strategy": "all"},
                         sprec={"prompt": "open", "rounds": 1}, selection={"budget": 1024})
    labels, run = runs.grid_point("grpo", {"budget": 256}, config)
    assert run.name == "grpo-open-n256" and labels["k"] is None  # every other candidate, not k = 3
    labels, run = runs.grid_point("sprec", {"budget": 256, "rounds": 2}, config)
    assert run.name == "sprec-open-r2-n256" and labels["rounds"] == 2


def test_beta_is_a_run_flag_and_a_study_axis():
    """-b overrides a preference objective's beta; a grid value equal to the block's keeps the main
    run's name (reused), another names the run."""
    config = config_with(["dmpo-open-n256"], dmpo={"prompt": "open", "beta": 1.0}, selection={"budget": 1024})
    labels, run = runs.grid_point("dmpo", {"budget": 256, "beta": 1.0}, config)
    assert run.name == "dmpo-open-n256" and labels["beta"] == 1.0
    labels, run = runs.grid_point("dmpo", {"budget": 256, "beta": 0.1}, config)
    assert run.name == "dmpo-open-b0.1-n256" and labels["beta"] == 0.1
    assert runs.block(run, config)["beta"] == 0.1
    labels, run = runs.grid_point("sft", {"prompt": "open", "budget": 256, "beta": 0.1}, config)
    assert run.name == "sft-open-n256" and labels["beta"] is None  # the axis does not apply


@pytest.mark.parametrize("lr", [5e-4, 1e-4, 2e-5, 1e-5, 3e-3, 1.5e-4, 0.00012345, 7.25e-6])
def test_learning_rate_spelling_reads_back_the_same_rate(lr):
    text = runs.lr_text(lr)
    assert float(text) == lr and re.fullmatch(r"[1-9](\.[0-9]*[1-9])?e-?[0-9]+", text)
    run = runs.Run("dmpo", "open", lr=lr)
    assert runs.parse(run.name) == run


def test_learning_rate_is_a_run_flag_and_a_study_axis():
    """-lr overrides the learning rate of any trained method's block; a grid value equal to the
    block's keeps the main run's name (reused), another names the run and reaches its settings."""
    config = config_with(["dmpo-open-n256"], dmpo={"prompt": "open", "beta": 1.0, "lr": 5e-4},
                         sft={"prompt": "open", "lr": 5e-4}, selection={"budget": 1024})
    assert runs.block(runs.parse("dmpo-open-lr1e-4"), config)["lr"] == 1e-4
    assert runs.block(runs.parse("dmpo-open"), config)["lr"] == 5e-4
    labels, run = runs.grid_point("dmpo", {"budget": 256, "lr": 0.0005}, config)
    assert run.name == "dmpo-open-n256" and labels["lr"] == 5e-4
    labels, run = runs.grid_point("dmpo", {"budget": 256, "lr": 0.0001, "beta": 0.1}, config)
    assert run.name == "dmpo-open-b0.1-lr1e-4-n256" and labels["lr"] == 1e-4
    assert runs.block(runs.parse(run.name), config)["lr"] == 1e-4 and runs.parse(run.name) == run
    labels, run = runs.grid_point("sft", {"prompt": "open", "budget": 256, "lr": 2e-5}, config)
    assert run.name == "sft-open-lr2e-5-n256" and runs.block(run, config)["lr"] == 2e-5
    assert run.sft() == runs.Run("sft", "open", budget=256)  # a tuned run's start keeps the sft block's rate
    # the config's `methods` takes such names (the schema's pattern of run names)
    validate({**config, "methods": ["dmpo-open-b0.1-lr1e-4-n256", "sprec-open-r2", "sft-open-lr2e-5"]})
