"""`llm.compile`: the decoder forward of the trainer's loss and of the packed scorer through
`torch.compile` (Inductor), with a persistent cache shared by a run's jobs and bucketed lengths.

What is compiled: the decoder's forward (`model.get_decoder()`, PEFT's LoRA layers inside it),
i.e. the call `workflow.llm.scoring.token_logprobs` makes for every loss (SFT, the preference
objectives, SOFT) and for the likelihood scoring of evaluation. The LM head on the answer
positions stays eager: it starts with `torch.unique` (a data-dependent shape, a graph break).
The compiled function is kept beside the decoder (`enable`), so one model compiles once per job
and the scorer finds it (`forward_of`); without it everything runs eager as before.

Shapes: the packed rows are right-padded to a bucket of BUCKET tokens (`bucket`), so a job's
micro-batches fall into a few lengths, a warm job meets the lengths a cold one compiled, and
padding costs at most BUCKET - 1 tokens a row (pads attend only to the prompt and themselves,
never read: the log-probs are unchanged). `dynamic=None` (torch's automatic dynamic): the first
shape compiles static, a second one recompiles once with the changed dimensions symbolic, which
then serves every later shape, and torch keeps that decision in the cache folder (its PGO
profile), so a warm job compiles the dynamic graph directly: at most two compiles a job, not one
per (batch, length) pair.

Cache (`configure_cache`): Inductor's FX graph cache, AOTAutograd's cache, the autotune cache and
Triton's kernels all under `llm.compile_cache` (default results/.compile-cache), so the second
job of a run with the same model and shapes loads kernels instead of generating and building them.

`auto` (`decide`): eager under float32 compute (measured slower compiled); under bf16, compile
when the estimated CPU seconds saved exceed the estimated compile seconds. Saved = work /
EAGER_RATE * (1 - 1 / SPEEDUP), work = the job's tokens (every token id of its examples, epochs
times) times the model's parameters; compile cost = COMPILE_SECONDS per
30 decoder layers (Inductor's time grows with the graph, i.e. the layers). The constants are
those of SmolLM2-135M on the project's machine kind (below; bench/bench_compile.py measures them);
break-even ~160k tokens a job there (~385 SFT samples of ~420 tokens, one epoch), so the default
256-sample jobs stay eager and larger budgets compile. On CUDA `auto` stays eager (not measured
here; `on` compiles).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch

log = logging.getLogger("workflow.llm.compiling")

MODES = ("auto", "on", "off")
BUCKET = 64  # packed row lengths are padded to a multiple of this: 64, 128, ..., 448, 512, ...
ATTRIBUTE = "_llmrec_compiled_forward"  # where `enable` keeps the compiled forward on the decoder

# Measured on the project's machine kind (Xeon with AMX, bf16 autocast; issue 35): SmolLM2-135M,
# LoRA r 8, batch 4 x ~420 tokens, eager 445 and compiled 764 tokens per CPU-second (1 thread),
# 142 s of compilation; bench/bench_compile.py measures them again on the machine it runs on.
EAGER_RATE = 445 * 134.5e6  # token-parameters per CPU-second of an eager SFT step (445 tokens/s x 134.5M)
SPEEDUP = 1.7               # compiled over eager tokens per CPU-second
COMPILE_SECONDS = 150.0     # CPU seconds of a cold compile (forward + backward, 30 layers)
REFERENCE_LAYERS = 30


def configure_cache(folder: str | os.PathLike | None) -> None:
    """Point Inductor's persistent caches at `folder` (created); None keeps torch's default
    (a folder under /tmp, per user). Must run before the first compile of the process."""
    if folder is None:
        return
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    inductor_config.autotune_local_cache = True
    functorch_config.enable_autograd_cache = True


def example_tokens(example: Any) -> int:
    """Token ids in a training example: the lengths of its lists of ints (prompt, answer,
    candidate answers), nested anywhere in dicts, lists and tuples."""
    if isinstance(example, dict):
        return sum(example_tokens(v) for v in example.values())
    if isinstance(example, (list, tuple)):
        if example and all(isinstance(x, int) for x in example):
            return len(example)
        return sum(example_tokens(v) for v in example)
    return 0


def estimate(model: torch.nn.Module, tokens: float) -> dict[str, float]:
    """{eager, saved, compile} CPU seconds of a job that runs `tokens` tokens through `model`."""
    n_params = sum(p.numel() for p in model.parameters())
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", REFERENCE_LAYERS)
    eager = tokens * n_params / EAGER_RATE
    return {"eager": eager, "saved": eager * (1 - 1 / SPEEDUP),
            "compile": COMPILE_SECONDS * layers / REFERENCE_LAYERS}


def decide(mode: str | bool, model: torch.nn.Module, examples: Sequence[Any] = (), epochs: int = 1) -> bool:
    """Whether to compile (module docstring for `auto`); logs the estimate."""
    if isinstance(mode, bool):  # YAML's bare on / off
        mode = "on" if mode else "off"
    if mode not in MODES:
        raise ValueError(f"config key 'llm.compile': {mode!r} is not one of {', '.join(MODES)}")
    if mode != "auto":
        return mode == "on"
    device = next(model.parameters()).device
    if device.type != "cpu":
        log.info("llm.compile auto: eager on %s (compile gains not measured there; llm.compile on compiles)", device)
        return False
    if not any(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad):
        # float32 compute (a CPU without native bf16; the stage casts frozen linears to bf16 only
        # under bf16): bench_compile measured the compiled SFT step 0.85x eager there (AVX2, 1 thread)
        log.info("llm.compile auto: eager (float32 compute; compiling gains only under bf16)")
        return False
    tokens = epochs * sum(example_tokens(e) for e in examples)
    est = estimate(model, tokens)
    verdict = est["saved"] > est["compile"]
    log.info("llm.compile auto: %d tokens, eager ~%.0f CPU s, compiling would save ~%.0f s for ~%.0f s of "
             "compilation: %s", tokens, est["eager"], est["saved"], est["compile"], "compile" if verdict else "eager")
    return verdict


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_decoder()


def enable(model: torch.nn.Module, cache: str | os.PathLike | None = None, *, dynamic: bool | None = None) -> None:
    """Compile the decoder forward of `model` (once; the scorer then uses it). On CUDA: the default
    mode, not `reduce-overhead`: its CUDA graphs would be re-recorded for every new length and pin
    a memory pool per graph, while the packed rows change length from batch to batch."""
    configure_cache(cache)
    import torch._inductor.config as inductor_config

    # dropout (LoRA's) draws from torch's generator as eager does: the same masks compiled or not,
    # and a run resumed from a checkpoint's RNG state goes on alike
    inductor_config.fallback_random = True
    decoder = _decoder(model)
    if ATTRIBUTE not in decoder.__dict__:
        # a plain attribute (not a submodule): the state dict and saved adapters stay unchanged
        decoder.__dict__[ATTRIBUTE] = torch.compile(decoder.forward, dynamic=dynamic)


def disable(model: torch.nn.Module) -> None:
    _decoder(model).__dict__.pop(ATTRIBUTE, None)


def forward_of(decoder: torch.nn.Module):
    """The decoder's compiled forward when `enable` made one, else the decoder itself."""
    return decoder.__dict__.get(ATTRIBUTE, decoder)


def is_compiled(decoder: torch.nn.Module) -> bool:
    return ATTRIBUTE in decoder.__dict__


def bucket(length: int) -> int:
    """`length` rounded up to a multiple of BUCKET."""
    return -(-length // BUCKET) * BUCKET


def graph_breaks() -> dict[str, int]:
    """Graph breaks of this process so far, by reason (torch._dynamo's counters)."""
    from torch._dynamo.utils import counters

    return dict(counters["graph_break"])


def log_graph_breaks(where: str) -> dict[str, int]:
    breaks = graph_breaks()
    if breaks:
        log.warning("%s: %d graph breaks: %s", where, sum(breaks.values()),
                    "; ".join(f"{n}x {reason[:160]}" for reason, n in breaks.items()))
    else:
        log.info("%s: compiled without graph breaks", where)
    return breaks
