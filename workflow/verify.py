"""`make verify`: a content hash of every artifact of a results folder, what each is expected to
match on another machine, and a comparison of two such reports that names the first artifact (in
DAG order) where two runs diverge.

Two classes:
- `identical`: integer and seeded work only (ingested data, samples and candidate sets, the random
  selections and their -n subsets, the random / popularity baselines): the same bytes on any
  machine for the same config and seed. A difference here is a bug.
- `tolerance`: anything a float kernel computed (the SASRec surrogate and everything downstream of
  it or of the LLM: influence / effort scores and the DEALRec selections, reference log-probs,
  adapters, predictions, metrics, the summary). Reduction order differs between CPUs (AVX-512 vs AMX
  bf16 kernels, MKL's code paths per vendor) and thread counts, so these match bit for bit on the
  same machine kind and thread count, and otherwise within float rounding, which can flip a rank
  (and so a hit) where two candidates tie to a few ulps. For them the report also holds each float
  column's mean, compared with a relative tolerance.

The report starts with what decides the float results: CPU model and bf16 instructions (they
decide `llm.dtype: auto`), torch threads, package versions.

    python -m workflow.verify results --out results/verify.json
    python -m workflow.verify results --compare other-machine/verify.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# (pattern on the path relative to the results folder, class, DAG stage for ordering)
RULES = [
    (r"^models/", "identical", 0),  # the GGUF's dequantisation: integer codes times scales, exact in fp32
    (r"^[^/]+/data/", "identical", 0),
    (r"^[^/]+/selection/(budget/)?(random|all)(-s\d+)?(-n\d+-s\d+)?\.parquet$", "identical", 1),
    (r"^[^/]+/baselines/", "identical", 1),
    (r"^[^/]+/surrogate/", "tolerance", 2),
    (r"^[^/]+/selection/", "tolerance", 3),
    (r"^[^/]+/llm/title_embeddings", "tolerance", 3),
    (r"^[^/]+/llm/[^/]+/[^/]+/reference_logprobs", "tolerance", 5),
    (r"^[^/]+/llm/[^/]+/[^/]+/adapter/", "tolerance", 4),
    (r"^[^/]+/llm/[^/]+/[^/]+/self_distilled", "tolerance", 5),
    (r"^[^/]+/(llm|transfer)/.*/(valid|test)/", "tolerance", 6),
    (r"^summary\.parquet$", "tolerance", 7),
    (r"^studies/.*\.parquet$", "tolerance", 8),
]
TIMING = {"seconds", "tokens_per_s", "elapsed", "time_s"}  # wall-clock columns (training logs): never equal
SKIP = re.compile(r"(^logs/|^benchmarks/|^report/|\.ckpt/|\.log$|\.html$|\.png$|\.md$|\.tsv$|/explanations\.)")


def classify(relative: str) -> tuple[str, int] | None:
    if SKIP.search(relative):
        return None
    for pattern, kind, stage in RULES:
        if re.search(pattern, relative):
            return kind, stage
    return None


def _canonical(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_canonical(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and np.isnan(value):
        return "nan"
    return value


def table_digest(path: Path) -> dict[str, Any]:
    """A hash of a Parquet table's data (not its metadata: paths and versions), its rows, and the
    mean of each float column."""
    frame = pd.read_parquet(path)
    frame = frame[[c for c in frame.columns if c not in TIMING]]
    h = hashlib.sha256()
    means = {}
    for column in frame.columns:
        values = frame[column]
        h.update(column.encode())
        if pd.api.types.is_float_dtype(values):
            array = values.to_numpy(dtype=np.float64)
            h.update(array.tobytes())
            means[column] = float(np.nanmean(array)) if np.isfinite(array).any() else None
        elif values.dtype == object and len(values) and isinstance(values.iloc[0], (list, np.ndarray)):
            flat = [np.asarray(v, dtype=object).tolist() for v in values]
            h.update(json.dumps(_canonical(flat), default=str).encode())
            if flat and all(isinstance(x, float) for x in (flat[0] or [0.0])) and flat[0]:
                means[column] = float(np.mean([np.mean(np.asarray(v, dtype=np.float64)) for v in flat if len(v)]))
        else:
            h.update(json.dumps(_canonical(values.tolist()), default=str).encode())
    return {"hash": h.hexdigest()[:16], "rows": len(frame), "means": means}


def file_digest(path: Path) -> dict[str, Any]:
    if path.suffix == ".parquet":
        return table_digest(path)
    if path.suffix in (".safetensors", ".pt"):
        if path.suffix == ".pt":
            import torch

            tensors = {k: v.float().numpy() for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
                       if hasattr(v, "numpy")}
        else:
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
        h = hashlib.sha256()
        for name in sorted(tensors):
            h.update(name.encode())
            h.update(np.ascontiguousarray(tensors[name]).tobytes())
        return {"hash": h.hexdigest()[:16], "rows": len(tensors),
                "means": {"abs": float(np.mean([np.abs(t.astype(np.float64)).mean() for t in tensors.values()]))}}
    return {"hash": hashlib.sha256(path.read_bytes()).hexdigest()[:16], "rows": None, "means": {}}


def environment() -> dict[str, Any]:
    import torch

    flags = ""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                     platform.processor())
        flags = " ".join(f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f in cpuinfo)
    except OSError:
        model = platform.processor()
    from workflow.llm.model import resolve_dtype

    versions = {}
    for name in ("torch", "transformers", "peft", "numpy", "pandas", "recbole", "faiss"):
        module = sys.modules.get(name) or __import__(name)
        versions[name] = getattr(module, "__version__", "?")
    return {"cpu": model, "cpu_flags": flags, "llm_dtype_auto": str(resolve_dtype("auto", "cpu")),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "versions": versions}


def report(results: Path) -> dict[str, Any]:
    artifacts = {}
    for path in sorted(p for p in results.rglob("*") if p.is_file()):
        relative = path.relative_to(results).as_posix()
        found = classify(relative)
        if found is None or path.suffix not in (".parquet", ".safetensors", ".pt"):
            continue
        kind, stage = found
        artifacts[relative] = {"class": kind, "stage": stage, **file_digest(path)}
    return {"environment": environment(), "artifacts": artifacts}


def compare(mine: dict[str, Any], other: dict[str, Any], rtol: float = 0.02) -> list[str]:
    """Lines describing each difference, in DAG order; the first names the first divergence."""
    lines = []
    a, b = mine["artifacts"], other["artifacts"]
    for name in sorted(set(a) | set(b), key=lambda n: ((a.get(n) or b.get(n))["stage"], n)):
        if name not in a or name not in b:
            lines.append(f"{name}: only in {'this' if name in a else 'the other'} run")
            continue
        x, y = a[name], b[name]
        if x["hash"] == y["hash"]:
            continue
        if x["class"] == "identical":
            lines.append(f"{name} [identical expected]: DIFFERENT (hash {x['hash']} vs {y['hash']}): a bug")
            continue
        far = {k: (x["means"][k], y["means"].get(k)) for k in x["means"]
               if y["means"].get(k) is not None and x["means"][k] is not None
               and abs(x["means"][k] - y["means"][k]) > rtol * max(abs(x["means"][k]), abs(y["means"][k]), 1e-12)}
        verdict = (f"beyond {rtol:.0%}: " + ", ".join(f"{k} {u:.6g} vs {v:.6g}" for k, (u, v) in far.items())
                   if far else f"float rounding (column means within {rtol:.0%})")
        lines.append(f"{name} [tolerance]: bytes differ, {verdict}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="?", default="results")
    p.add_argument("--out", default=None, help="write the report (JSON) here")
    p.add_argument("--compare", default=None, help="a report of another run to compare with")
    a = p.parse_args(argv)
    results = Path(a.results)
    if not results.is_dir():
        print(f"{results}: no results folder (run `make run` first)", file=sys.stderr)
        return 1
    mine = report(results)
    env = mine["environment"]
    print(f"machine: {env['cpu']} [{env['cpu_flags']}]; llm.dtype auto -> {env['llm_dtype_auto']}; "
          f"torch {env['versions']['torch']}, {env['torch_threads']} threads")
    counts = {k: sum(v["class"] == k for v in mine["artifacts"].values()) for k in ("identical", "tolerance")}
    print(f"{len(mine['artifacts'])} artifacts: {counts['identical']} expected identical on any machine, "
          f"{counts['tolerance']} within float tolerance (same bytes on the same machine kind and threads)")
    for name, row in sorted(mine["artifacts"].items(), key=lambda kv: (kv[1]["stage"], kv[0])):
        print(f"  {row['hash']}  {row['class']:<9}  {name}")
    if a.out:
        from workflow.io import write_json

        write_json(mine, a.out)
    if a.compare:
        other = json.loads(Path(a.compare).read_text())
        oe = other["environment"]
        print(f"against {a.compare}: {oe['cpu']} [{oe['cpu_flags']}]; llm.dtype auto -> {oe['llm_dtype_auto']}")
        lines = compare(mine, other)
        if not lines:
            print("every artifact identical")
        else:
            print(f"{len(lines)} differ; the first in DAG order: {lines[0]}")
            for line in lines[1:]:
                print("  " + line)
        return 1 if any("a bug" in line for line in lines) else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
