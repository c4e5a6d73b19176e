"""The GPU preflight: a GPU config's first job stops the run at once, with what to do, when this
node cannot run it (rule `preflight`, before the base model).

Checks: CUDA usable by this torch build; at least `llm.gpu` GPUs; the NVIDIA driver new enough for
the build's CUDA version (a driver older than the toolkit's minimum makes `torch.cuda.is_available()`
quietly False, the most common failure: the PyPI torch 2.13.0 wheel is built for CUDA 13 and needs
driver >= 580, where envs/gpu.yaml's CUDA 12.8 build runs on >= 525.60.13); native bf16 when
`llm.dtype` is bfloat16; bitsandbytes for `llm.quantization`.

    python -m workflow.preflight --spec '{"llm": {...}}' --out results/preflight/gpu.json
"""
from __future__ import annotations

import importlib.util
import subprocess
from typing import Any

from workflow import cli
from workflow.io import write_json

# The minimum Linux driver of each CUDA major version (NVIDIA's CUDA compatibility tables: minor
# version compatibility within a major version).
MIN_DRIVER = {11: (450, 80, 2), 12: (525, 60, 13), 13: (580, 0, 0)}


def driver_version() -> str | None:
    """The NVIDIA driver version nvidia-smi reports, None without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    return lines[0] if lines else None


def facts() -> dict[str, Any]:
    """What this node offers (torch build, CUDA, driver, GPUs, bf16, bitsandbytes)."""
    import torch

    available = torch.cuda.is_available()
    return {
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "driver": driver_version(),
        "cuda_available": available, "gpus": torch.cuda.device_count() if available else 0,
        "names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if available else [],
        "native_bf16": bool(available and torch.cuda.is_bf16_supported(including_emulation=False)),
        "bitsandbytes": importlib.util.find_spec("bitsandbytes") is not None,
    }


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def problems(llm: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """Why `llm` cannot run on a node with `found` (empty: it can)."""
    out: list[str] = []
    wanted = int(llm["gpu"]) or (1 if llm["device"] == "cuda" else 0)
    if not wanted:
        return out
    build = found.get("torch_cuda")
    if not build:
        out.append(f"torch {found.get('torch')} is a CPU build: install the CUDA environment "
                   "(`--sdm conda` uses envs/gpu.yaml; or pip install the torch wheel of envs/gpu.yaml)")
    elif found.get("driver") is None:
        out.append(f"no NVIDIA driver found (nvidia-smi failed): this job is not on a GPU node; set the "
                   "profile's slurm_partition to a GPU partition, or llm.gpu: 0 and llm.device: cpu")
    else:
        need = MIN_DRIVER.get(_version(build)[0])
        if need and _version(found["driver"]) < need:
            out.append(f"NVIDIA driver {found['driver']} is older than {'.'.join(map(str, need))}, which torch "
                       f"{found['torch']} (built for CUDA {build}) needs: update the driver, or use a torch build "
                       f"for an older CUDA (envs/gpu.yaml: CUDA 12.8, driver >= 525.60.13)")
        elif not found.get("cuda_available"):
            out.append(f"CUDA is not available to torch {found['torch']} (CUDA {build}, driver {found['driver']}): "
                       "check CUDA_VISIBLE_DEVICES and that the job was given a GPU")
    if found.get("cuda_available") and found.get("gpus", 0) < wanted:
        out.append(f"llm.gpu = {wanted}, but this job sees {found.get('gpus', 0)} GPU(s)")
    if found.get("cuda_available") and llm["dtype"] == "bfloat16" and not found.get("native_bf16"):
        out.append(f"llm.dtype = bfloat16, but {', '.join(found.get('names') or ['this GPU'])} has no native bf16 "
                   "(emulated: slow); use llm.dtype: auto (float16 with loss scaling) or float16")
    if llm["quantization"] != "none" and not found.get("bitsandbytes"):
        out.append(f"llm.quantization = {llm['quantization']} needs the bitsandbytes package (envs/gpu.yaml)")
    return out


def run_preflight(spec: dict[str, Any], out: str) -> dict[str, Any]:
    from workflow.config import stage_settings

    llm = stage_settings(spec, {"llm": "llm"})["llm"]
    found = facts()
    found_problems = problems(llm, found)
    if found_problems:
        raise ValueError("GPU preflight failed:\n  - " + "\n  - ".join(found_problems))
    write_json({"llm": llm, **found}, out)
    return found


def main(argv=None) -> int:
    p = cli.parser("Stop a GPU config at once when this node cannot run it.")
    p.add_argument("--spec", type=cli.json_arg, required=True, help='JSON {"llm": {...}}')
    p.add_argument("--out", required=True)
    return cli.run(lambda a: run_preflight(a.spec, a.out), p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
