"""iLoRA's mixture of LoRA experts with one gate per sample (arXiv 2408.10159; DESIGN section 5).

Written by hand: no library provides a LoRA mixture gated per *sample* by an outside signal (PEFT's
X-LoRA gates per token from the model's own hidden states). A LoRA of rank r is cut block-wise into
n experts of rank r/n (expert k = B[:, k] A[k, :]); every adapted linear computes

    h = W0 x + (alpha / (r/n)) * sum_k g_k B_k A_k dropout(x)

with g = softmax(router(s)) [n] of the sample, shared by every adapted module of every layer, every
token and every decoding step. Because the experts are rank blocks, the sum is one matmul pair:
(dropout(x) A^T * g repeated r/n times per expert) B^T. With n = 1 and g = 1 this is PEFT's LoRA
(scaling alpha / r); with uniform weights 1/n it is also a plain LoRA of rank r.

The gate is installed per forward call by `experts_gate(model, gates)` (a context manager setting one
[B, n] tensor on every expert layer); batch row b of every activation is sample b (the packed scorer,
the prompt cache and `generate` keep that contract). Outside the context no gate is set and the layers
return W0 x alone: the base model (what `evaluate.base_model_only` expects for grounding).

Router (the gate network) on the SASRec sequence representation s [d]: the authors' 1-D ResNet (Conv1d
1->16, three stages of 3 residual blocks with 16/32/64 channels and strides 1/2/2, average pool,
Linear(64, n)) or a Linear(d, n) ablation. Where a block changes the stride or the channel count its
shortcut subsamples and zero-pads the channels (no parameters, as the authors'); the router trains
with its own weight decay (`ilora.router_weight_decay`, authors 1e-5) and 0.3 x the learning rate.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from workflow.runs import rank_split_problem


class ExpertLoRALinear(nn.Module):
    """A frozen linear layer plus n LoRA experts of rank r/n mixed by the installed per-sample gate."""

    def __init__(self, base: nn.Linear, r: int, n_experts: int, alpha: float, dropout: float):
        super().__init__()
        if problem := rank_split_problem({"lora_r": r, "n_experts": n_experts}):  # config.validate's check too
            raise ValueError(problem)
        self.base = base
        self.n_experts, self.rank_per_expert = n_experts, r // n_experts
        self.scaling = alpha / self.rank_per_expert
        # created where the base layer lives (no move after attaching: a 7B model is on its GPU
        # already); float32 master weights, as PEFT keeps LoRA weights under a bf16/k-bit base
        where = {"device": base.weight.device, "dtype": torch.float32}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **where))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **where))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's LoRA initialisation
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.gate: torch.Tensor | None = None  # [B, n_experts], set by experts_gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.gate is None:
            return out
        if self.gate.shape[0] != x.shape[0]:
            raise RuntimeError(f"gate for {self.gate.shape[0]} samples, activations of {x.shape[0]}")
        weight = self.gate.repeat_interleave(self.rank_per_expert, dim=1)  # [B, r]
        low = self.dropout(x).to(self.lora_A.dtype) @ self.lora_A.T  # [B, T, r]
        low = low * weight[:, None, :].to(low.dtype)
        return out + (low @ self.lora_B.T).to(out.dtype) * self.scaling


def add_experts(model: nn.Module, spec: dict[str, Any], n_experts: int, seed: int) -> list[str]:
    """Freeze `model` and replace each linear named in spec["target_modules"] by an ExpertLoRALinear
    (lora_r, lora_alpha, lora_dropout from spec); initial weights depend on `seed` only. Returns the
    names of the replaced modules."""
    targets = set(spec["target_modules"])
    model.requires_grad_(False)
    torch.manual_seed(seed)
    replaced = []
    for name, module in list(model.named_modules()):
        if name.rsplit(".", 1)[-1] in targets and isinstance(module, nn.Linear):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1],
                    ExpertLoRALinear(module, int(spec["lora_r"]), n_experts, float(spec["lora_alpha"]),
                                     float(spec["lora_dropout"])))
            replaced.append(name)
    if not replaced:
        raise ValueError(f"config key 'target_modules' {sorted(targets)}: no linear layer of the model has these names")
    return replaced


def expert_layers(model: nn.Module) -> list[ExpertLoRALinear]:
    return [m for m in model.modules() if isinstance(m, ExpertLoRALinear)]


@contextlib.contextmanager
def experts_gate(model: nn.Module, gates: torch.Tensor, keep: bool = False) -> Iterator[None]:
    """Install the per-sample gate [B, n] on every expert layer for the calls inside the block.
    `keep`: leave it installed after the block (until the next one replaces it), for a training
    forward whose backward recomputes the layers (gradient checkpointing) after the block ended."""
    layers = expert_layers(model)
    if not layers:
        raise ValueError("the model has no expert layers (add_experts)")
    if gates.dim() != 2 or gates.shape[1] != layers[0].n_experts:
        raise ValueError(f"gates of shape {tuple(gates.shape)}, expected [B, {layers[0].n_experts}]")
    for layer in layers:
        layer.gate = gates
    try:
        yield
    finally:
        if not keep:
            for layer in layers:
                layer.gate = None


def expert_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The experts' trainable weights by module name (what an iLoRA adapter saves)."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters()
            if ".lora_A" in name or ".lora_B" in name}


# ----------------------------------------------------------------------------- the router

class ShortcutA(nn.Module):
    """The parameter-free residual shortcut ("option A" of He et al.'s CIFAR ResNets, what the
    authors' router uses) when a block changes the stride or the channel count: keep every
    `stride`-th position (x[:, :, ::stride], the same length a stride-s, padding-1, kernel-3 conv
    gives) and zero-pad the channels, (channels - channels_in) // 2 zero channels before and the rest
    after (planes // 4 on each side when the count doubles, as the authors' lambda)."""

    def __init__(self, channels_in: int, channels: int, stride: int):
        super().__init__()
        if channels < channels_in:
            raise ValueError(f"a zero-padding shortcut cannot reduce {channels_in} channels to {channels}")
        self.stride = stride
        self.before = (channels - channels_in) // 2
        self.after = channels - channels_in - self.before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x[:, :, :: self.stride], (0, 0, self.before, self.after))


class ResidualBlock1d(nn.Module):
    """conv3-BN-ReLU-conv3-BN plus the shortcut, then ReLU; the shortcut is the identity or, when the
    stride or the channel count changes, the parameter-free ShortcutA (the authors': no 1x1 conv)."""

    def __init__(self, channels_in: int, channels: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(channels_in, channels, 3, stride=stride, padding=1, bias=False), nn.BatchNorm1d(channels),
            nn.ReLU(), nn.Conv1d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm1d(channels))
        self.skip = (nn.Identity() if stride == 1 and channels_in == channels else
                     ShortcutA(channels_in, channels, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def resnet_router(n_experts: int, stages: Sequence[tuple[int, int]] = ((16, 1), (32, 2), (64, 2)),
                  blocks: int = 3) -> nn.Module:
    """The authors' gate network: the d-vector as a 1-channel sequence through a small 1-D ResNet."""
    layers: list[nn.Module] = [nn.Unflatten(1, (1, -1)), nn.Conv1d(1, stages[0][0], 3, padding=1, bias=False),
                               nn.BatchNorm1d(stages[0][0]), nn.ReLU()]
    channels = stages[0][0]
    for width, stride in stages:
        for b in range(blocks):
            layers.append(ResidualBlock1d(channels, width, stride if b == 0 else 1))
            channels = width
    layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(channels, n_experts)]
    return nn.Sequential(*layers)


def build_router(kind: str, d: int, n_experts: int) -> nn.Module:
    if kind == "resnet":
        return resnet_router(n_experts)
    if kind == "linear":
        return nn.Linear(d, n_experts)
    raise ValueError(f"config key 'ilora.router': unknown router {kind!r} (known: resnet, linear)")


def gate_weights(router: nn.Module | None, inputs: torch.Tensor | None, n_experts: int, batch: int) -> torch.Tensor:
    """softmax(router(inputs)) [B, n]; uniform 1/n without a router (the `uniform` gate)."""
    if router is None:
        device = inputs.device if inputs is not None else None
        return torch.full((batch, n_experts), 1.0 / n_experts, device=device)
    return torch.softmax(router(inputs).float(), dim=-1)
