"""`make verify` (workflow/verify.py): artifacts hashed by content (not metadata or timing), each
classed as identical-everywhere or float-tolerance, and two reports compared in DAG order."""
from __future__ import annotations

import numpy as np
import pandas as pd

from workflow import verify
from workflow.io import write_parquet


def fake_results(root, *, score_shift=0.0, samples_extra=False, seconds=1.0):
    ids = ["s0", "s1", "s2"] + (["s3"] if samples_extra else [])
    write_parquet(pd.DataFrame({"sample_id": ids, "history": [["a", "b"]] * len(ids)}),
                  root / "ml/data/samples.parquet", config={"path": str(root)})  # metadata differs per run
    write_parquet(pd.DataFrame({"sample_id": ["s0"]}), root / "ml/selection/random.parquet")
    write_parquet(pd.DataFrame({"value": np.array([0.5, 0.25]) * (1 + score_shift)}),
                  root / "ml/llm/sft-open/random/test/metrics.parquet")
    write_parquet(pd.DataFrame({"step": [1], "loss": [2.0], "seconds": [seconds]}),
                  root / "ml/llm/sft-open/random/adapter/train_log.parquet")
    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / "logs" / "x.log").write_text(str(seconds))
    return root


def test_classes_and_hashes_ignore_metadata_and_timing(tmp_path):
    a = verify.report(fake_results(tmp_path / "a", seconds=1.0))
    b = verify.report(fake_results(tmp_path / "b", seconds=9.0))
    assert {n: v["class"] for n, v in a["artifacts"].items()} == {
        "ml/data/samples.parquet": "identical", "ml/selection/random.parquet": "identical",
        "ml/llm/sft-open/random/test/metrics.parquet": "tolerance",
        "ml/llm/sft-open/random/adapter/train_log.parquet": "tolerance"}
    assert verify.compare(a, b) == []  # other paths in metadata, other timings: the same content
    assert a["environment"]["llm_dtype_auto"].startswith("torch.")


def test_compare_names_the_first_divergence_and_flags_identical_ones(tmp_path):
    base = verify.report(fake_results(tmp_path / "a"))
    rounding = verify.report(fake_results(tmp_path / "b", score_shift=1e-6))
    lines = verify.compare(rounding, base)
    assert len(lines) == 1 and "float rounding" in lines[0] and "metrics.parquet" in lines[0]
    far = verify.compare(verify.report(fake_results(tmp_path / "c", score_shift=0.5)), base)
    assert "beyond 2%" in far[0]
    bug = verify.compare(verify.report(fake_results(tmp_path / "d", samples_extra=True, score_shift=0.5)), base)
    assert bug[0].startswith("ml/data/samples.parquet [identical expected]") and "a bug" in bug[0]  # DAG order


def test_cli_writes_a_report_and_compares(tmp_path, capsys):
    root = fake_results(tmp_path / "a")
    assert verify.main([str(root), "--out", str(tmp_path / "a.json")]) == 0
    assert verify.main([str(root), "--compare", str(tmp_path / "a.json")]) == 0
    assert "every artifact identical" in capsys.readouterr().out
    other = fake_results(tmp_path / "b", samples_extra=True)
    assert verify.main([str(other), "--compare", str(tmp_path / "a.json")]) == 1
