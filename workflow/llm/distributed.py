"""Data parallel for LoRA training and sharded evaluation: one process per GPU (`workflow.launch`
starts them with torchrun), gradients reduced by hand.

Why by hand and not DDP: the scorers call the decoder directly (`get_base_model`), bypassing the
`forward` that DDP hooks, and only the LoRA / projector / router gradients need reducing. The
trainer splits each optimizer step's micro-batches across ranks, sums `loss * n_tokens` gradients
and the token-weight total over ranks, then divides: N ranks make the same update as one process
with the same global batch (up to float summation order).

Outside torchrun (no WORLD_SIZE in the environment) everything here is a no-op for one process, so
the stages run unchanged on a laptop. Backend: NCCL on CUDA, gloo on the CPU (the tests).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init(device: torch.device | None = None) -> bool:
    """Join the process group torchrun describes (once); True when running with several ranks."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30),
                                device_id=device if cuda else None)
    return True


def device_for_rank(device: torch.device) -> torch.device:
    """A bare `cuda` means this rank's GPU (LOCAL_RANK of the GPUs the launcher made visible)."""
    if device.type == "cuda" and device.index is None and world_size() > 1:
        return torch.device("cuda", local_rank())
    return device


def shard(items: Sequence[Any]) -> list[Any]:
    """This rank's share, round-robin: rank r takes items r, r + N, ... (in order)."""
    return list(items[rank()::world_size()])


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> None:
    """Sum each tensor over ranks, in place (one flat buffer: one collective per call)."""
    if world_size() <= 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1).to(torch.float64 if t.dtype == torch.float64 else torch.float32)
                      for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t).to(t.dtype))
        offset += n


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if world_size() <= 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()



@contextlib.contextmanager
def main_writes() -> Iterator[bool]:
    """`with main_writes() as writer:` rank 0 does the block's writes (`writer` True), the other
    ranks skip them; every rank leaves the block once rank 0's writes are done."""
    yield is_main()
    barrier()
