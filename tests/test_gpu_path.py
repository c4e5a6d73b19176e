"""The GPU path, tested on the CPU: modules every method adds are created on the model's device
(a model on the `meta` device stands for a GPU), gradient checkpointing gives the same gradients,
k-bit layers are never cast or merged into, the preflight names what is wrong, the launcher gives
parallel jobs distinct GPUs, and the resources and launchers of the rules come from config keys."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from workflow import launch, preflight
from workflow.config import validate_block
from workflow.llm import ilora, llara, soft, train
from workflow.llm.model import cast_frozen_linears, is_quantized

LORA = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def tiny_meta_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    with torch.device("meta"):
        return LlamaForCausalLM(cfg)


def devices(model: nn.Module) -> set[str]:
    return {str(t.device) for t in [*model.parameters(), *model.buffers()]}


@pytest.mark.parametrize("method", ["sft", "dmpo", "soft", "llara", "ilora"])
def test_every_method_creates_its_modules_on_the_model_device(method, smollm_tokenizer_dir, tmp_path):
    """The base model is on `meta` (as a GPU model is on cuda): whatever a method adds must be there
    too; a module created on the CPU after the model moved (iLoRA's experts, before) fails here."""
    from transformers import AutoTokenizer

    model = tiny_meta_model()
    if method in ("sft", "soft"):
        model = train.add_lora(model, LORA, seed=0)
    elif method == "dmpo":  # the policy: the sft adapter loaded trainable (PEFT places it on the base's device)
        from peft import LoraConfig, PeftModel, get_peft_model

        cpu = tiny_meta_model().to_empty(device="cpu")
        get_peft_model(cpu, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "sft")
        model = PeftModel.from_pretrained(model, str(tmp_path / "sft"), is_trainable=True)
    else:
        tokenizer = AutoTokenizer.from_pretrained(smollm_tokenizer_dir)
        block = {**LORA, "n_experts": 2, "gate": "sequence", "router": "resnet", "projector_hidden": None}
        cfg = llara.hybrid_config(method, block, 8, model.config.hidden_size)
        table = ({"i0": 0, "i1": 1}, torch.randn(2, 8))
        model, parts = llara.attach(method, model, block, cfg, tokenizer, "surrogate", table, seed=0)
        assert parts.item_vectors.device.type == "meta"
        if method == "ilora":
            assert ilora.expert_layers(model) and parts.router is not None
    assert devices(model) == {"meta"}, f"{method}: parameters on {devices(model)}"
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)  # fp32 master weights


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir):
    from workflow.llm.model import load_model, prepare_for_training
    from workflow.llm.scoring import answer_logprobs

    prompts, answers = [[5, 6, 7, 8, 9], [10, 11, 12]], [[13, 14], [15, 16, 17]]
    grads = {}
    for checkpointing in (False, True):
        model, _ = load_model(tiny_model_dir, device="cpu", dtype="float32")
        model = prepare_for_training(model, validate_block("llm", {"gradient_checkpointing": checkpointing}))
        model = train.add_lora(model, {**LORA, "target_modules": ["q_proj", "v_proj", "down_proj"]}, seed=0)
        with torch.no_grad():  # non-zero B, so the gradients reach A and the earlier layers
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
        model.train()
        logprob, _ = answer_logprobs(model, prompts, answers)
        (-logprob.sum()).backward()
        grads[checkpointing] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        assert model.base_model.model.is_gradient_checkpointing == checkpointing
    assert grads[True].keys() == grads[False].keys()
    for name in grads[False]:
        # the recomputed forward is the same float32 computation: equal up to kernel order
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-5, atol=1e-7, msg=name)


class Linear4bit(nn.Linear):
    """A stand-in of bitsandbytes' Linear4bit (an nn.Linear whose weight holds packed uint8)."""

    def __init__(self, n_in, n_out):
        super().__init__(n_in, n_out, bias=False)
        self.weight = nn.Parameter(torch.zeros(n_out * n_in // 2, 1, dtype=torch.uint8), requires_grad=False)


def test_casts_and_merges_skip_quantized_layers():
    model = nn.Sequential(nn.Linear(4, 4), Linear4bit(4, 4), nn.Linear(4, 2))
    model.requires_grad_(False)
    assert is_quantized(model[1]) and not is_quantized(model[0])
    assert cast_frozen_linears(model, torch.bfloat16) == 2
    assert model[0].weight.dtype == torch.bfloat16 and model[1].weight.dtype == torch.uint8
    assert soft.has_quantized_layers(model)
    assert not soft.can_fold(model, copy=False)  # no merge into 4-bit weights
    with pytest.raises(ValueError, match="answering_model"):
        soft.generation_model(model, torch.bfloat16)
    with soft.answering_model(model, torch.bfloat16) as answering:
        assert answering is model  # run as it is, not copied, merged nor cast
    plain = nn.Sequential(nn.Linear(4, 4))
    assert soft.can_fold(plain, copy=True)
    assert not soft.can_fold(nn.Sequential(nn.Linear(4, 4, device="meta")), copy=True)  # no copy of a GPU model


def test_quantization_config_needs_cuda_and_names_the_key():
    from workflow.llm.model import quantization_config

    assert quantization_config("none", torch.bfloat16, torch.device("cpu")) is None
    with pytest.raises(ValueError, match="llm.quantization.*CUDA"):
        quantization_config("nf4", torch.bfloat16, torch.device("cpu"))
    with pytest.raises(ValueError, match="llm.quantization"):
        quantization_config("int4", torch.bfloat16, torch.device("cuda"))


def test_dtype_auto_takes_float16_where_bf16_is_emulated(monkeypatch):
    from workflow.llm import model as model_module

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert model_module.resolve_dtype("auto", "cuda") == torch.float16  # a T4: emulated bf16 only
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert model_module.resolve_dtype("auto", "cuda") == torch.bfloat16
    assert train.grad_scaler(torch.device("cpu"), torch.bfloat16) is None
    assert isinstance(train.grad_scaler(torch.device("cpu"), torch.float16), torch.amp.GradScaler)


GOOD = {"torch": "2.13.0+cu128", "torch_cuda": "12.8", "driver": "550.54.15", "cuda_available": True, "gpus": 2,
        "names": ["NVIDIA A100"], "native_bf16": True, "bitsandbytes": True}


@pytest.mark.parametrize("found, message", [
    ({"torch_cuda": None, "cuda_available": False}, "CPU build"),
    ({"driver": None, "cuda_available": False}, "no NVIDIA driver"),
    ({"torch_cuda": "13.0", "driver": "550.54.15", "cuda_available": False}, "older than 580.0.0"),
    ({"gpus": 1}, "llm.gpu = 2, but this job sees 1"),
    ({"native_bf16": False, "names": ["Tesla T4"]}, "Tesla T4 has no native bf16"),
    ({"bitsandbytes": False}, "needs the bitsandbytes"),
])
def test_preflight_names_what_is_wrong(found, message):
    llm = {"gpu": 2, "device": "cuda", "dtype": "bfloat16", "quantization": "nf4"}
    assert preflight.problems(llm, GOOD) == []
    assert any(message in p for p in preflight.problems(llm, {**GOOD, **found}))
    assert preflight.problems({"gpu": 0, "device": "cpu"}, {**GOOD, **found}) == []  # a CPU config: nothing to check


def test_preflight_stops_with_a_clear_message_here(tmp_path, capsys):
    """On this CPU machine (a CPU build of torch) a GPU config stops at once, exit 1, one message."""
    out = tmp_path / "gpu.json"
    code = preflight.main(["--spec", json.dumps({"llm": {"gpu": 1, "device": "cuda"}}), "--out", str(out)])
    assert code == 1 and not out.exists()
    assert "GPU preflight failed" in capsys.readouterr().err


def test_parallel_launches_claim_distinct_gpus(tmp_path):
    with launch.claim_gpus(2, total=4, lock_dir=tmp_path) as first:
        with launch.claim_gpus(1, total=4, lock_dir=tmp_path) as second:
            assert first == [0, 1] and second == [2]
    with launch.claim_gpus(3, total=4, lock_dir=tmp_path) as again:  # released when a job ends
        assert again == [0, 1, 2]
    with pytest.raises(SystemExit, match="shows 1 GPU"):
        with launch.claim_gpus(2, total=1, lock_dir=tmp_path):
            pass
    assert launch.command("workflow.llm.sft", ["--x"], 1) == ([sys.executable, "-m", "workflow.llm.sft", "--x"], {})
    argv, env = launch.command("workflow.llm.evaluate", ["--run", "base-open"], 2)
    assert "--nproc-per-node=2" in argv and "--run" not in argv  # torchrun never parses the stage's flags
    assert json.loads(env[launch.STAGE_ENV]) == ["workflow.llm.evaluate", "--run", "base-open"]


def test_rules_take_resources_and_launchers_from_config(tmp_path):
    """`snakemake -n` of a 2-GPU config: training asks for 2 GPUs and starts torchrun through the
    launcher, scoring asks for 1, per-rule overrides apply, the preflight comes first."""
    root = Path(__file__).resolve().parent.parent
    config = {"llm": {"gpu": 2, "device": "cuda"},
              "resources": {"llm": {"mem": "40GB"}, "rules": {"sft": {"runtime": "12h"}}}}
    (tmp_path / "gpu.yaml").write_text(json.dumps(config))
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--configfile", str(tmp_path / "gpu.yaml"),
                          "--config", f"results={tmp_path}/results", "--", f"{tmp_path}/results/ml-100k/llm/"
                          "sft-open/random/adapter"], capture_output=True, text=True, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "rule preflight:" in text and "rule base_model:" in text
    sft = text[text.index("rule sft:"):]
    assert "workflow.launch --gpus 2 -- workflow.llm.sft" in sft
    assert "runtime=720" in sft and "gpu=2" in sft and "mem_mb=40000" in sft
    prepare = text[text.index("rule prepare:"):]
    assert "gpu=" not in prepare.split("Shell command")[0] and "mem_mb=8000" in prepare  # a CPU rule: its own



def test_ilora_gradient_checkpointing_recomputes_under_the_sample_gate(tiny_model_dir):
    """The gate is installed around the forward; the checkpointed backward recomputes the layers
    after that block, so the training context keeps it installed: same gradients as without."""
    from transformers import AutoTokenizer

    from workflow.llm import prompts
    from workflow.llm.model import load_model, prepare_for_training

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    block = {**LORA, "n_experts": 2, "gate": "sequence", "router": "linear", "projector_hidden": None}
    ids = [prompts.open_prompt_ids(tokenizer, ["Heat (1995)", "Fargo (1996)"], "movie", max_title_tokens=8,
                                   max_prompt_tokens=512, item_marker=llara.PLACEHOLDER)] * 2
    answers = [prompts.clipped_answer_ids(tokenizer, t, 8) for t in ("Alien (1979)", "Jaws (1975)")]
    batch = {"prompts": ids, "answers": answers, "items": [["i0", "i1"], ["i1", "i0"]],
             "gate_inputs": torch.randn(2, 8, generator=torch.Generator().manual_seed(0))}
    grads = {}
    for checkpointing in (False, True):
        model, _ = load_model(tiny_model_dir, device="cpu", dtype="float32")
        model = prepare_for_training(model, validate_block("llm", {"gradient_checkpointing": checkpointing}))
        cfg = llara.hybrid_config("ilora", block, 8, model.config.hidden_size)
        table = ({"i0": 0, "i1": 1}, torch.randn(2, 8, generator=torch.Generator().manual_seed(1)))
        model, parts = llara.attach("ilora", model, block, cfg, tokenizer, "surrogate", table, seed=0)
        with torch.no_grad():
            for layer in ilora.expert_layers(model):
                layer.lora_B.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
        model.train()
        loss, _, _ = llara.make_loss_fn(parts, {"hybrid": True})(model, batch)
        loss.backward()
        grads[checkpointing] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys() and any("router" in n for n in grads[True])
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-5, atol=1e-7, msg=name)
