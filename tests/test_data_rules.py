"""The data rules as a user meets them: results that do not depend on where the virtual environment
lives, a `prepare:` change that leaves ingestion alone, rules that run without an activated
environment, and a failed job's log shown without a profile."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from workflow.formats import embedded_folder

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def snakemake(*args, env=None, cwd=ROOT):
    return subprocess.run([str(SNAKEMAKE), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def planned_rules(output: str) -> list[str]:
    """The rule of every job a dry run plans (`rule X:` / `localrule X:` headers), sorted."""
    return sorted(re.findall(r"^(?:local)?rule (\w+):$", output, flags=re.M))


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """The default config's ml-100k ingested for real (the embedded dataset) into its own results."""
    results = tmp_path_factory.mktemp("ingested") / "results"
    out = snakemake("--cores", 1, "--config", f"results={results}", "--", results / "ml-100k/data/interactions.parquet")
    assert out.returncode == 0, out.stdout + out.stderr
    return results


def test_a_moved_environment_plans_nothing(ingested, tmp_path):
    """The embedded dataset found at another place (a virtual environment elsewhere: here a recbole
    package earlier on the path holding the same files) leaves the ingested tables up to date."""
    elsewhere = tmp_path / "site-packages" / "recbole"
    (elsewhere / "dataset_example").mkdir(parents=True)
    (elsewhere / "__init__.py").write_text("")
    (elsewhere / "dataset_example" / "ml-100k").symlink_to(embedded_folder())
    env = {"PYTHONPATH": f"{tmp_path / 'site-packages'}:{ROOT}"}
    moved = subprocess.run([sys.executable, "-c", "from workflow.formats import embedded_folder; print(embedded_folder())"],
                           capture_output=True, text=True, env={**os.environ, **env}, cwd=ROOT)
    assert moved.stdout.strip() == str(elsewhere / "dataset_example" / "ml-100k")  # the test moves it
    out = snakemake("-n", "--config", f"results={ingested}", "--", ingested / "ml-100k/data/interactions.parquet", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert planned_rules(out.stdout) == [], out.stdout


def test_a_datasets_prepare_block_reruns_prepare_not_ingest(ingested, tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("datasets:\n  ml-100k: {format: recbole-atomic, path: embedded, domain: movie, prepare: {kcore: 3}}\n")
    out = snakemake("-n", "--configfile", overlay, "--config", f"results={ingested}", "--",
                    ingested / "ml-100k/data/samples.parquet")
    assert out.returncode == 0, out.stdout + out.stderr
    assert planned_rules(out.stdout) == ["prepare"], out.stdout


def test_rules_run_without_an_activated_environment_and_a_failure_shows_its_log(tmp_path):
    """With no virtual environment on PATH and no profile, a job runs under Snakemake's interpreter,
    and its failure prints the tail of its log (the error ingest gives), not only its log's name."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "u.data").write_text("not a line\n")
    (raw / "u.item").write_bytes((ROOT / "tests/fixtures/raw/movielens-100k/u.item").read_bytes())
    overlay = tmp_path / "bad.yaml"
    overlay.write_text(f"datasets:\n  bad: {{format: movielens-100k, path: {raw}}}\n")
    env = {"PATH": "/usr/bin:/bin", "VIRTUAL_ENV": "", "PYTHONPATH": ""}
    out = snakemake("--cores", 1, "--configfile", overlay, "--replace-workflow-config", "--config",
                    f"results={tmp_path}/results", "--", tmp_path / "results/bad/data/interactions.parquet", env=env)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "No module named" not in text and "python: command not found" not in text, text
    assert f"log {tmp_path}/results/logs/bad/ingest.log:" in text, text
    assert f"IngestError: {raw}/u.data, line 1: expected 4 fields" in text, text


@pytest.mark.parametrize("entry, message", [
    ("{format: movielens-1m, path: /nonexistent/ml-1m}",
     "dataset 'x': folder /nonexistent/ml-1m does not exist (expected files ratings.dat and movies.dat)"),
    (f"{{format: amazon-2014, path: {ROOT}/tests/fixtures/raw/amazon-2014}}",
     "dataset 'x': format amazon-2014 needs key 'category' (e.g. Video_Games)"),
    ("{source: amazon-2014}", "dataset 'x': source amazon-2014 needs a category"),
])
def test_missing_data_stops_the_dry_run(tmp_path, entry, message):
    """A dataset's missing files or category stop the workflow when it is parsed, with ingest's message."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(f"datasets:\n  x: {entry}\n")
    out = snakemake("-n", "--configfile", overlay, "--replace-workflow-config", "--config", f"results={tmp_path}/results")
    assert out.returncode != 0
    assert message in out.stdout + out.stderr, out.stdout + out.stderr


def test_the_paper_dry_run_has_no_wildcard_errors(tmp_path):
    out = snakemake("-n", "--configfile", "config/paper.yaml", "--replace-workflow-config", "--config",
                    f"results={tmp_path}/results")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "WildcardError" not in out.stdout + out.stderr
    assert planned_rules(out.stdout).count("download") == 4
