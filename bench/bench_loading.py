"""Benchmark of the host memory a model load takes: the peak resident memory of a fresh process
that loads the converted model, against the size of its weight files.

  whole model, then .to   what `load_model` did before: build the model in host memory, then move
                          it (on a GPU node the host copy stays until it is freed: ~2x the weights)
  device_map (now)        `load_model`: transformers builds on the meta device and loads the
                          shards straight onto the target device (accelerate's device_map)

On this CPU machine the target is the CPU itself, so the figure is the host copy of the weights
plus the runtime (torch, transformers); on a GPU node the device_map load puts the weights on the
GPU and the host keeps only what a shard needs. Each loading runs in its own process (peak RSS is
per process: VmHWM); the baseline is a process that imports the same libraries and loads nothing.

    .venv/bin/python bench/bench_loading.py [--model-dir results/models/base] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_evaluate import ensure_model  # noqa: E402

CHILD = r'''
import json, sys
def hwm():  # peak resident KiB of this process image (VmHWM resets at exec; ru_maxrss does not)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
import torch
from transformers import AutoModelForCausalLM
sys.path.insert(0, {root!r})
from workflow.llm.model import load_model
mode, path, device = sys.argv[1], sys.argv[2], sys.argv[3]
before = hwm()
if mode == "whole model, then .to":
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
elif mode == "device_map (now)":
    model, _ = load_model(path, device=device, dtype="float32")
peak = hwm()
print(json.dumps({{"before_kib": before, "peak_kib": peak}}))
'''

MODES = ["imports only", "whole model, then .to", "device_map (now)"]


def measure(mode: str, model_dir: Path, device: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT)), mode, str(model_dir), device],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=None, help="a converted model folder (default: the embedded one, converted once)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    model_dir = Path(a.model_dir) if a.model_dir else ensure_model(Path(tempfile.gettempdir()) / "llmrec-bench-model")
    weights = sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) / 2**20
    rows = {mode: measure(mode, model_dir, a.device) for mode in MODES}
    base = rows["imports only"]["peak_kib"] / 1024
    print(f"weights on disk: {weights:.0f} MiB ({model_dir}); device {a.device}")
    print(f"{'loading':<24} {'peak RSS MiB':>12} {'above imports':>14} {'x weights':>10}")
    for mode, r in rows.items():
        peak = r["peak_kib"] / 1024
        print(f"{mode:<24} {peak:>12.0f} {peak - base:>14.0f} {(peak - base) / weights:>10.2f}")


if __name__ == "__main__":
    main()
