"""Every run-time measure RecBole 1.2.1 needs here (numpy 2, pandas 3, torch 2.13): for
correctness, for speed, and against side effects outside `results/`.

Nothing in site-packages is edited: `apply()` patches at run time, is idempotent, and must be called
before RecBole builds a `Config`. Each measure says what breaks without it.

1. numpy 2 removed `np.float_`, `np.complex_` and `np.unicode_`. RecBole's
   `Config.compatibility_settings` reads them to re-create `np.float`, `np.int`, `np.bool`, ...
   (used in its dataset, interaction and metric code), so `Config(...)` raises AttributeError.
   We restore the three names as aliases of the numpy 2 types; RecBole then sets the rest itself.
2. pandas 3 copy-on-write: RecBole's chained `df[col].fillna(..., inplace=True)` (in
   `Dataset._load_feat` for sequence fields and `Dataset._fill_nan`) silently does nothing.
   Nothing is patched for this; instead no data the model sees may need a fill: the atomic files
   we write have no missing values, and `check_no_missing` verifies each file after it is written.
3. torch >= 2.6 loads with `weights_only=True` by default. RecBole's `Trainer` saves checkpoints
   that pickle its `Config` and reloads them (`evaluate(load_best_model=True)`,
   `resume_checkpoint`) with a bare `torch.load`, which now fails. Only inside
   `recbole.trainer.trainer` we make `torch.load` default to `weights_only=False`: those files
   are the ones this process's trainer has just written to its own temporary folder. The
   exported surrogate checkpoint is a plain state_dict and loads with `weights_only=True`.
4. pandas 3 made `Series.agg(func)` always pass the whole Series; pandas 2 first tried `func`
   element-wise. RecBole calls `feat[field].agg(len)` for per-row sequence lengths (remapping
   token sequences, and `item_length` of pre-split sequential files), which now returns the row
   count: the remap fails, or every sequence gets the same wrong length. `create_dataset` below
   restores the element-wise meaning of `agg(len)` only while RecBole builds a dataset, and
   silences there pandas' ChainedAssignmentError warnings (about measure 2) and its deprecation
   of `inplace=True` (which still works in pandas 3).
5. Importing `recbole.model.sequential_recommender` runs `torch.autograd.set_detect_anomaly(True)`
   (a module-level line in its SINE model), which makes every training step of every model
   record Python stack traces: SASRec training steps run 1.6x slower on an idle machine
   (bench/bench_surrogate.py), far more under CPU contention. `apply()`
   imports that package once and switches anomaly detection back off.
6. RecBole's `Config` reads `sys.argv` (`--key=value` pairs, passed through `eval`) and sets
   `CUDA_VISIBLE_DEVICES` from its `gpu_id`, overriding what a scheduler assigned. `make_config`
   builds it with an empty command line, picks the device through `gpu_id`, and restores the
   environment variable afterwards.
7. Speed, same function: RecBole's `FeedForward.gelu` spells the exact (erf) GELU as five
   separate tensor operations, each with its own autograd node; on CPU with SASRec's small
   layers they take about a fifth of a training step. `apply()` swaps in torch's fused
   `torch.nn.functional.gelu`, the same exact-erf GELU (outputs agree to ~1e-6).
8. RecBole's `Trainer.__init__` opens a TensorBoard `SummaryWriter` under `./log_tensorboard`
   of the current working directory, i.e. it writes outside `results/`. We hand it a writer
   that discards everything (the stage logs its own figures).
"""
from __future__ import annotations

import contextlib
import functools
import os
import types
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch

# numpy 1 alias -> numpy 2 type (only those RecBole reads and numpy 2 removed)
_NUMPY_ALIASES = {"float_": np.float64, "complex_": np.complex128, "unicode_": np.str_}


def _restore_numpy_aliases() -> None:
    for name, value in _NUMPY_ALIASES.items():
        if not hasattr(np, name):
            setattr(np, name, value)


def _trusted_torch_load(*args, **kwargs):
    kwargs.setdefault("weights_only", False)
    return torch.load(*args, **kwargs)


def _torch_with_trusted_load() -> types.ModuleType:
    """A stand-in for the `torch` module whose `load` defaults to weights_only=False."""
    shim = types.ModuleType("torch")
    shim.__dict__.update(torch.__dict__)
    shim.load = _trusted_torch_load
    return shim


def _fused_gelu(self, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x)


def _discarding_tensorboard(logger=None) -> types.SimpleNamespace:
    """What RecBole's Trainer calls on its writer (add_scalar, add_hparams), doing nothing."""
    ignore = lambda *args, **kwargs: None  # noqa: E731
    return types.SimpleNamespace(add_scalar=ignore, add_hparams=ignore, close=ignore, flush=ignore)


@functools.cache
def apply() -> None:
    """Apply measures 1, 3, 5, 7 and 8 above (2 is `check_no_missing`, 4 is `create_dataset`,
    6 is `make_config`).
    Safe to call twice."""
    _restore_numpy_aliases()
    import recbole.model.sequential_recommender  # noqa: F401  (its import enables anomaly mode)

    torch.autograd.set_detect_anomaly(False)
    from recbole.model.layers import FeedForward

    FeedForward.gelu = _fused_gelu
    import recbole.trainer.trainer as trainer_module

    trainer_module.torch = _torch_with_trusted_load()
    trainer_module.get_tensorboard = _discarding_tensorboard


@contextlib.contextmanager
def _elementwise_agg_len() -> Iterator[None]:
    """Measure 4: inside the block, `Series.agg(len)` is `Series.map(len)` as in pandas 2."""
    original = pd.Series.agg

    def agg(self, func=None, *args, **kwargs):
        if func is len:
            return self.map(len)
        return original(self, func, *args, **kwargs)

    pd.Series.agg = pd.Series.aggregate = agg
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", pd.errors.ChainedAssignmentError)
            warnings.simplefilter("ignore", pd.errors.Pandas4Warning)  # `drop_duplicates(inplace=True)`
            yield
    finally:
        pd.Series.agg = pd.Series.aggregate = original


def make_config(model, dataset: str, config_dict: dict, device: str):
    """`recbole.config.Config` for `device` ("cpu" or "cuda") under measure 6 (call `apply()` first)."""
    import sys

    from recbole.config import Config

    saved_argv, saved_visible = sys.argv, os.environ.get("CUDA_VISIBLE_DEVICES")
    gpu_id = "" if device == "cpu" else (saved_visible if saved_visible else "0")
    sys.argv = sys.argv[:1]
    try:
        return Config(model=model, dataset=dataset, config_dict={**config_dict, "gpu_id": gpu_id})
    finally:
        sys.argv = saved_argv
        if saved_visible is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved_visible


def create_dataset(config):
    """`recbole.data.create_dataset` under measure 4 (call `apply()` first)."""
    from recbole.data import create_dataset as recbole_create_dataset

    with _elementwise_agg_len():
        return recbole_create_dataset(config)


def check_no_missing(path: str | Path) -> None:
    """Measure 2: fail if an atomic file has an empty or missing field, which RecBole's no-op
    `fillna(inplace=True)` under pandas 3 would pass on as NaN instead of filling."""
    path = Path(path)
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[], quoting=3)
    for column in frame.columns:
        empty = frame[column].str.strip() == ""
        if empty.any():
            line = int(np.flatnonzero(empty.to_numpy())[0]) + 2  # 1-based, after the header
            raise ValueError(f"{path}: line {line}: empty value in column '{column}'")
