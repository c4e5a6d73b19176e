"""LoRA SFT (workflow/llm/sft.py) on a tiny Llama with the real SmolLM2 tokenizer, fp32."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from test_train import collate as padded_hf_batch
from workflow.llm import sft, train
from workflow.llm.data import sft_examples

SFT = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"], "epochs": 2,
       "lr": 0.01, "batch_size": 2, "grad_accum": 2, "warmup_ratio": 0.1, "weight_decay": 0.0,
       "max_grad_norm": 1.0, "checkpoint_every": 1}
LLM = {"device": "cpu", "dtype": "float32", "max_title_tokens": 8, "max_prompt_tokens": 512}
SPEC = {"llm": LLM, "sft": SFT, "domain": "movie"}



def tables():
    words = ["Alien", "Heat", "Fargo", "Brazil", "Casablanca", "Vertigo", "Psycho", "Jaws", "Rocky", "Amadeus",
             "Gattaca", "Tampopo"]
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(len(words))],
                          "title": [f"{w} ({1970 + k})" for k, w in enumerate(words)],
                          "categories": [[] for _ in words]})
    rows = []
    for s in range(10):
        split = "train" if s < 8 else "test"
        history = [f"i{(s + j) % 12}" for j in range(3)]
        target = f"i{(s + 3) % 12}"
        candidates = [f"i{(s + 3 + 2 * j) % 12}" for j in range(4)]
        candidates = candidates[s % 4:] + candidates[:s % 4]
        rows.append({"sample_id": f"s{s}", "split": split, "user_id": f"u{s}", "history": history,
                     "target": target, "candidates": candidates})
    return pd.DataFrame(rows), items


@pytest.fixture
def inputs(tmp_path):
    samples, items = tables()
    paths = {k: tmp_path / f"{k}.parquet" for k in ("samples", "items", "selection")}
    samples.to_parquet(paths["samples"])
    items.to_parquet(paths["items"])
    pd.DataFrame({"sample_id": [f"s{k}" for k in (6, 0, 1, 2, 3, 4)]}).to_parquet(paths["selection"])
    return paths


def cli_args(tiny_model_dir, paths, out, spec=SPEC):
    return ["--model-dir", str(tiny_model_dir), "--samples", str(paths["samples"]), "--items", str(paths["items"]),
            "--selection", str(paths["selection"]), "--spec", json.dumps(spec), "--seed", "0", "--threads", "1",
            "--out", str(out)]


def adapter_tensors(folder):
    import safetensors.torch

    return safetensors.torch.load_file(folder / "adapter_model.safetensors")


def test_examples_prompt_and_answer(tiny_model_dir):
    from workflow.llm import prompts
    from workflow.llm.model import load_tokenizer

    samples, items = tables()
    tokenizer = load_tokenizer(tiny_model_dir)
    examples = sft_examples(samples.head(2), items, tokenizer, "movie", LLM)
    text = tokenizer.decode(examples[0]["prompt"])
    assert "Alien (1970)" in text and "Which movie will the user watch next?" in text
    assert examples[0]["answer"] == prompts.answer_ids(tokenizer, "Brazil (1973)")
    assert tokenizer.decode(examples[0]["answer"]).startswith("Brazil (1973)")


def test_example_builders_name_the_sample_of_bad_input(tiny_model_dir):
    """Both builders refuse an item missing from the items table and a target outside the candidates,
    naming the sample; preference examples also refuse a target listed twice."""
    from workflow.llm.data import preference_examples
    from workflow.llm.model import load_tokenizer

    samples, items = tables()
    tokenizer = load_tokenizer(tiny_model_dir)
    unknown = samples.head(2).copy()
    unknown.at[1, "history"] = ["i0", "nope"]
    outside = samples.head(2).copy()
    outside.at[0, "candidates"] = [c for c in outside.at[0, "candidates"] if c != outside.at[0, "target"]]
    twice = samples.head(1).copy()
    twice.at[0, "candidates"] = [twice.at[0, "target"]] * 2 + list(twice.at[0, "candidates"][:2])
    for build in (sft_examples, preference_examples):
        with pytest.raises(ValueError, match="sample 's1': item 'nope' is not in the items table"):
            build(unknown, items, tokenizer, "movie", LLM)
        with pytest.raises(ValueError, match="sample 's0': the target"):
            build(outside, items, tokenizer, "movie", LLM)
    with pytest.raises(ValueError, match="sample 's0': the target must be among its candidates exactly once"):
        preference_examples(twice, items, tokenizer, "movie", LLM)
    assert len(sft_examples(twice, items, tokenizer, "movie", LLM)) == 1  # a repeated target trains once


def test_loss_is_masked_cross_entropy_of_a_plain_forward(tiny_model_dir):
    """The scorer-based loss equals HF's own cross-entropy with labels -100 on prompt and padding."""
    from transformers import AutoModelForCausalLM

    from workflow.llm.model import load_tokenizer

    samples, items = tables()
    tokenizer = load_tokenizer(tiny_model_dir)
    examples = sft_examples(samples.head(3), items, tokenizer, "movie", LLM)
    examples[1]["prompt"] = examples[1]["prompt"][5:]  # prompts of different lengths: padding matters
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        loss, n, diag = sft.sft_loss(model, sft.collate(examples))

        def reference(examples, prompt_labels=False):
            ids, labels, mask = padded_hf_batch(examples)  # labels -100 on the prompt
            if prompt_labels:
                for i, e in enumerate(examples):
                    labels[i, 1:len(e["prompt"])] = torch.tensor(e["prompt"][1:])
            return model(input_ids=ids, attention_mask=mask, labels=labels).loss

        assert int(n) == sum(len(e["answer"]) for e in examples)
        assert diag["tokens"] == sum(len(e["prompt"]) + len(e["answer"]) - 1 for e in examples)
        torch.testing.assert_close(loss, reference(examples), rtol=0, atol=1e-5)
        assert abs(float(loss) - float(reference(examples, prompt_labels=True))) > 1e-2  # prompt not in the loss
        changed = [dict(e) for e in examples]
        changed[0]["answer"] = [changed[0]["answer"][0] + 1] + changed[0]["answer"][1:]
        assert abs(float(sft.sft_loss(model, sft.collate(changed))[0]) - float(loss)) > 1e-4
        torch.testing.assert_close(sft.sft_loss(model, sft.collate(changed))[0], reference(changed), rtol=0, atol=1e-5)


def test_cli_writes_adapter_that_reloads(tiny_model_dir, inputs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sft" / "adapter"
    assert sft.main(cli_args(tiny_model_dir, inputs, out)) == 0
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert not train.checkpoint_dir_for(out).exists()
    saved = json.loads((out / "training_config.json").read_text())
    assert saved["seed"] == 0 and saved["config"]["sft"]["lora_r"] == 4 and saved["config"]["n_samples"] == 6
    log = pd.read_parquet(out / "train_log.parquet")
    assert log["step"].tolist() == [1, 2, 3, 4]  # 6 samples, batch 2, accum 2 -> 2 steps per epoch
    assert (log["tokens"] > log["n_tokens"]).all()

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, out).eval()
    assert any(float(p.abs().sum()) > 0 for n, p in tuned.named_parameters() if "lora_B" in n)
    samples, items = tables()
    from workflow.llm.model import load_tokenizer

    batch = sft.collate(sft_examples(samples.head(4), items, load_tokenizer(tiny_model_dir), "movie", LLM))
    with torch.no_grad():
        tuned_loss = sft.sft_loss(tuned, batch)[0]
        with tuned.disable_adapter():
            base_loss = sft.sft_loss(tuned, batch)[0]
    assert float(tuned_loss) != float(base_loss)


def test_same_seed_same_adapter_and_resume_after_kill(tiny_model_dir, inputs, tmp_path, monkeypatch):
    whole = tmp_path / "a" / "adapter"
    assert sft.main(cli_args(tiny_model_dir, inputs, whole)) == 0
    again = tmp_path / "b" / "adapter"
    assert sft.main(cli_args(tiny_model_dir, inputs, again)) == 0
    for name, tensor in adapter_tensors(whole).items():
        assert torch.equal(tensor, adapter_tensors(again)[name]), name

    killed = tmp_path / "c" / "adapter"
    calls = {"n": 0}
    real_loss = sft.sft_loss

    def dies_in_epoch_two(model, batch):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt  # like a kill: not handled by cli.run
        return real_loss(model, batch)

    monkeypatch.setattr(sft, "sft_loss", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        sft.main(cli_args(tiny_model_dir, inputs, killed))
    assert not killed.exists() and (train.checkpoint_dir_for(killed) / train.CHECKPOINT_FILE).exists()
    monkeypatch.setattr(sft, "sft_loss", real_loss)
    assert sft.main(cli_args(tiny_model_dir, inputs, killed)) == 0
    assert not train.checkpoint_dir_for(killed).exists()
    resumed = adapter_tensors(killed)
    for name, tensor in adapter_tensors(whole).items():
        assert torch.equal(tensor, resumed[name]), name


def test_bad_inputs_are_clear_errors(tiny_model_dir, inputs, tmp_path, capsys):
    def fails_with(*words, spec=SPEC):
        assert sft.main(cli_args(tiny_model_dir, inputs, tmp_path / "adapter", spec)) == 1
        err = capsys.readouterr().err
        assert all(w in err for w in words), err

    pd.DataFrame({"sample_id": ["s1", "s9"]}).to_parquet(inputs["selection"])  # s9 is a test sample
    fails_with("selection.parquet", "'s9' is not a train sample")
    pd.DataFrame({"sample_id": ["s1", "nope"]}).to_parquet(inputs["selection"])
    fails_with("selection.parquet", "nope")
    pd.DataFrame({"sample_id": ["s1"]}).to_parquet(inputs["selection"])
    fails_with("sft.lr", spec={**SPEC, "sft": {**SFT, "lr": -1}})
    fails_with("target_modules", spec={**SPEC, "sft": {**SFT, "target_modules": ["nope_proj"]}})
    assert not (tmp_path / "adapter").exists()


def test_start_adapter_trains_that_adapter_further(tiny_model_dir, inputs, tmp_path, capsys):
    """SPRec's per-round SFT phase: --start-adapter continues an adapter instead of a fresh LoRA."""
    first = tmp_path / "first" / "adapter"
    assert sft.main(cli_args(tiny_model_dir, inputs, first)) == 0
    still = tmp_path / "still" / "adapter"
    assert sft.main(cli_args(tiny_model_dir, inputs, still, {**SPEC, "sft": {**SFT, "lr": 1e-12}})
                    + ["--start-adapter", str(first)]) == 0
    start, kept = adapter_tensors(first), adapter_tensors(still)
    assert start.keys() == kept.keys()
    for key in start:  # a vanishing step size: the start's weights, not a fresh LoRA (whose lora_B is 0)
        torch.testing.assert_close(kept[key], start[key], rtol=0, atol=1e-6)
    assert json.loads((still / "training_config.json").read_text())["config"]["start_adapter"] == str(first)

    further = tmp_path / "further" / "adapter"
    assert sft.main(cli_args(tiny_model_dir, inputs, further) + ["--start-adapter", str(first)]) == 0
    assert any(not torch.equal(adapter_tensors(further)[k], start[k]) for k in start)
    # same seed, same example order: the first step of the continued run sees a trained model
    first_log, further_log = (pd.read_parquet(p / "train_log.parquet") for p in (first, further))
    assert further_log["loss"].iloc[0] < first_log["loss"].iloc[0]

    assert sft.main(cli_args(tiny_model_dir, inputs, tmp_path / "x" / "adapter")
                    + ["--start-adapter", str(tmp_path / "nowhere")]) == 1
    assert "nowhere: no adapter_config.json" in capsys.readouterr().err
