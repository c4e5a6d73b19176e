"""Artifact I/O: atomic Parquet writes carrying provenance in the file's key-value metadata.

Every table a stage writes goes through `write_parquet`, so a crash never leaves a partial
artifact (temp file in the same folder, then `os.replace`) and every file says which config
slice, seed and package versions produced it.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

PROVENANCE_KEY = b"llmrec"
_VERSIONED = ("workflow", "pandas", "pyarrow", "numpy", "torch", "transformers", "peft", "recbole")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED:
        dist = "llmrec-workflow" if name == "workflow" else name
        try:
            versions[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the usual mode
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Like `atomic_path` for a folder: build it under a temp name, then swap it in."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def provenance(config: Any = None, seed: int | None = None, **extra: Any) -> dict[str, Any]:
    return {"config": config, "seed": seed, "versions": package_versions(), **extra}


def write_parquet(
    data: pd.DataFrame | pa.Table,
    path: str | os.PathLike,
    *,
    config: Any = None,
    seed: int | None = None,
    schema: pa.Schema | None = None,
    **extra: Any,
) -> Path:
    """Write `data` atomically with provenance metadata; returns the path."""
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, schema=schema, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    # pandas' own metadata is dropped: for Arrow-backed list columns pandas 3.1 records a dtype
    # string (`list<item: string>[pyarrow]`) that pd.read_parquet cannot parse back. The Arrow
    # schema alone round-trips every column type used here.
    meta.pop(b"pandas", None)
    meta[PROVENANCE_KEY] = json.dumps(provenance(config, seed, **extra), default=str, sort_keys=True).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(PROVENANCE_KEY)
    return json.loads(raw) if raw else {}


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)
