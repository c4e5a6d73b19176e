"""The README's Snakemake examples do what their comments say: each line of the block marked
`<!-- readme-examples -->` is dry-run (`-n`) in a checkout whose ml-100k data is ingested and
prepared (the default run's first steps), and the rules it plans are checked. A new line without a
check here fails, so the examples cannot drift from what they do."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def examples() -> dict[str, str]:
    """comment -> command of each line of the marked block."""
    block = README.split("<!-- readme-examples: tests/test_readme.py -->\n```bash\n", 1)[1].split("\n```", 1)[0]
    lines = [line.split("  # ", 1) for line in block.splitlines()]
    return {comment.strip(): command.strip() for command, comment in lines}


def planned(output: str) -> Counter:
    return Counter(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):$", output, flags=re.M))


TRAINING = {"sft", "preference", "hybrid", "soft", "self_distill", "reference_logprobs"}


def check_everything(jobs, out):
    assert {"summary", "sft", "preference", "hybrid", "soft", "evaluate"} <= set(jobs)
    assert not {"ingest", "prepare"} & set(jobs)  # done


def check_one_target(jobs, out):
    assert set(jobs) == {"surrogate"}


def check_rerun_one_rule(jobs, out):
    assert jobs == Counter({"prepare": 1})


def check_one_run(jobs, out):
    assert jobs["preference"] == 1 and jobs["sft"] == 1 and jobs["evaluate"] == 1
    assert not {"summary", "soft", "hybrid"} & set(jobs)
    assert "results/ml-100k/llm/dmpo-open-n256/random/adapter" in out


def check_reevaluate(jobs, out):
    """In this checkout the run is not trained yet: its sft-open-n256 training (on 256 samples) and
    its evaluation, nothing else of the default run."""
    assert jobs["evaluate"] == 1 and jobs["sft"] == 1
    assert not {"summary", "preference", "soft", "hybrid", "ingest", "prepare"} & set(jobs)
    assert "results/ml-100k/llm/sft-open-n256/random/adapter" in out


def check_until(jobs, out):
    assert "select_training_data" in jobs
    assert not TRAINING & set(jobs) and "summary" not in jobs


def check_overrides(jobs, out):
    assert {"ingest", "prepare", "summary"} <= set(jobs)
    assert "results-seed1/ml-100k/data/samples.parquet" in out and "--seed 1 " in out


def check_nested(jobs, out):
    assert {"ingest", "sft", "summary"} <= set(jobs)  # its own results folder
    assert '"epochs": 2,' in out and "results-e2/" in out


def check_tuning(jobs, out):
    """The trials run on the validation split only; the test split waits for the selection."""
    assert {"study", "tuning_selection", "sasrec_trial", "sft", "preference"} <= set(jobs)
    assert set(re.findall(r"split=(\w+)", out)) == {"valid"} and "/test/metrics.parquet" not in out


def check_paper(jobs, out):
    assert jobs["download"] == 4 and jobs["preflight"] == 1 and "summary" in jobs


CHECKS = {
    "everything on config/config.yaml": check_everything,
    "what would run, and why": check_everything,
    "one target and what it needs": check_one_target,
    "rerun one rule": check_rerun_one_rule,
    "one run, trained and evaluated": check_one_run,
    "re-evaluate one run": check_reevaluate,
    "stop after one rule": check_until,
    "override keys on the command line": check_overrides,
    "a nested key (typed by the schema)": check_nested,
    "tune the methods of tuning.spaces on the validation split, then test the chosen": check_tuning,
    "paper scale": check_paper,
    "static checks (clean)": None,
}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    """A checkout (the workflow's files linked) with the default's ml-100k ingested and prepared."""
    folder = tmp_path_factory.mktemp("checkout")
    for name in ("Snakefile", "rules", "workflow", "config", "profiles", "envs", "report"):
        (folder / name).symlink_to(ROOT / name)
    out = subprocess.run([str(SNAKEMAKE), "--cores", "2", "results/ml-100k/data/samples.parquet"], cwd=folder,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return folder


def test_every_example_has_a_check():
    assert set(examples()) == set(CHECKS)


@pytest.mark.parametrize("comment", list(CHECKS))
def test_readme_example(checkout, comment):
    command = shlex.split(examples()[comment])
    assert command[0] == "snakemake"
    dry = [] if "-n" in command or "--lint" in command else ["-n"]
    out = subprocess.run([str(SNAKEMAKE), *dry, "-p", *command[1:]] if "--lint" not in command else
                         [str(SNAKEMAKE), *command[1:]], cwd=checkout, capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{SNAKEMAKE.parent}:{os.environ['PATH']}"})
    assert out.returncode == 0, out.stdout + out.stderr
    if CHECKS[comment] is not None:
        CHECKS[comment](planned(out.stdout), out.stdout)


def test_the_paper_job_count_is_the_dry_runs(tmp_path):
    claimed = re.search(r"snakemake -n --configfile config/paper.yaml --replace-workflow-config +# (\d+) jobs", README)
    out = subprocess.run([str(SNAKEMAKE), "-n", "--configfile", "config/paper.yaml", "--replace-workflow-config",
                          "--config", f"results={tmp_path}/results"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert int(re.search(r"^total +(\d+)$", out.stdout, flags=re.M)[1]) == int(claimed[1])
