"""The reusable training loop (workflow/llm/train.py) on a tiny Llama, fp32, with a plain masked
cross-entropy loss (HF labels with -100 on prompt positions), independent of the scorer."""
from __future__ import annotations

import math

import pytest
import torch

from workflow.llm import train as T
from workflow.llm.model import cast_frozen_linears

SPEC = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
        "epochs": 2, "lr": 0.01, "batch_size": 2, "grad_accum": 2, "warmup_ratio": 0.25,
        "weight_decay": 0.01, "max_grad_norm": 1.0, "checkpoint_every": 0}



def examples(n=8, seed=0):
    """Token sequences with a prompt part and an answer part of varying lengths."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(10, 1000, (5 + i % 3,), generator=g).tolist()
        answer = torch.randint(10, 1000, (1 + i % 4,), generator=g).tolist()
        out.append({"prompt": prompt, "answer": answer})
    return out


def collate(batch):
    length = max(len(b["prompt"]) + len(b["answer"]) for b in batch)
    ids = torch.full((len(batch), length), 2)
    labels = torch.full((len(batch), length), -100)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for i, b in enumerate(batch):
        seq = b["prompt"] + b["answer"]
        ids[i, :len(seq)] = torch.tensor(seq)
        labels[i, len(b["prompt"]):len(seq)] = torch.tensor(b["answer"])
        mask[i, :len(seq)] = 1
    return ids, labels, mask


def masked_ce(model, batch):
    ids, labels, mask = batch
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    n = int((labels[:, 1:] != -100).sum())
    return out.loss, n, {"tokens": int(mask.sum()), "answer_share": n / int(mask.sum())}


def lora(tiny_model_dir, spec=SPEC, seed=0):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return T.add_lora(model, spec, seed)


def adapter_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def run(tiny_model_dir, spec=SPEC, seed=0, data=None, **kw):
    model = lora(tiny_model_dir, spec, seed)
    log = T.train(model, data if data is not None else examples(), collate, masked_ce, spec, seed=seed, **kw)
    return model, log


def assert_same(a, b, exact=True, atol=0.0):
    assert a.keys() == b.keys()
    for name in a:
        if exact:
            assert torch.equal(a[name], b[name]), name
        else:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


def test_loss_decreases_on_repeated_data(tiny_model_dir):
    data = examples(2) * 4
    spec = {**SPEC, "epochs": 4, "lr": 0.03, "batch_size": 4, "grad_accum": 1, "warmup_ratio": 0.0, "lora_r": 8,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    _, log = run(tiny_model_dir, spec, data=data)
    assert len(log) == 4 * 2
    per_epoch = log.groupby("epoch")["loss"].mean()
    assert per_epoch.iloc[-1] < per_epoch.iloc[0] - 0.3, per_epoch.tolist()
    assert set(log.columns) >= {"step", "epoch", "loss", "lr", "grad_norm", "n_tokens", "tokens", "tokens_per_s",
                                "answer_share"}
    assert (log["tokens"] > log["n_tokens"]).all()


def test_warmup_cosine_schedule(tiny_model_dir):
    spec = {**SPEC, "epochs": 3, "batch_size": 2, "grad_accum": 2, "warmup_ratio": 0.2}
    data = examples(10)  # 5 batches -> 3 steps per epoch (the last holds one micro-batch)
    _, log = run(tiny_model_dir, spec, data=data)
    total = 9
    assert T.steps_per_epoch(10, 2, 2) == 3 and len(log) == total
    warmup = math.ceil(0.2 * total)
    expected = [spec["lr"] * (s / warmup if s < warmup
                              else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))
                for s in range(total)]
    assert log["lr"].tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert log["epoch"].tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_gradient_accumulation_equals_big_batch(tiny_model_dir):
    """Equal up to float noise (which Adam amplifies on near-zero gradients to ~1e-6); weighting each
    micro-batch by its mean instead of its tokens would differ by ~1e-2 here."""
    small, _ = run(tiny_model_dir, {**SPEC, "batch_size": 2, "grad_accum": 2})
    big, _ = run(tiny_model_dir, {**SPEC, "batch_size": 4, "grad_accum": 1})
    one, _ = run(tiny_model_dir, {**SPEC, "batch_size": 1, "grad_accum": 4})
    assert_same(adapter_weights(small), adapter_weights(big), exact=False, atol=2e-5)
    assert_same(adapter_weights(one), adapter_weights(big), exact=False, atol=2e-5)


def test_same_seed_same_adapter_and_other_seed_differs(tiny_model_dir):
    spec = {**SPEC, "lora_dropout": 0.1}
    a, _ = run(tiny_model_dir, spec, seed=3)
    b, _ = run(tiny_model_dir, spec, seed=3)
    c, _ = run(tiny_model_dir, spec, seed=4)
    assert_same(adapter_weights(a), adapter_weights(b))
    assert any(not torch.equal(x, y) for x, y in zip(adapter_weights(a).values(), adapter_weights(c).values()))


class Crash(Exception):
    pass


def crashing_after(calls):
    count = {"n": 0}

    def loss_fn(model, batch):
        count["n"] += 1
        if count["n"] > calls:
            raise Crash
        return masked_ce(model, batch)

    return loss_fn


@pytest.mark.parametrize("checkpoint_every,crash_calls", [(0, 5), (1, 3)])
def test_killed_and_rerun_ends_with_the_same_adapter(tiny_model_dir, tmp_path, checkpoint_every, crash_calls):
    """2 epochs of 2 steps of 2 micro-batches, dropout on (so RNG state matters). Crash in epoch 2
    (epoch checkpoints) or mid-epoch 1 (a checkpoint every step), rerun, compare with no crash."""
    spec = {**SPEC, "lora_dropout": 0.1, "checkpoint_every": checkpoint_every}
    whole, whole_log = run(tiny_model_dir, spec)
    ckpt = tmp_path / "adapter.ckpt"
    model = lora(tiny_model_dir, spec)
    with pytest.raises(Crash):
        T.train(model, examples(), collate, crashing_after(crash_calls), spec, seed=0, checkpoint_dir=ckpt)
    assert (ckpt / T.CHECKPOINT_FILE).exists()
    resumed = lora(tiny_model_dir, spec)  # a fresh process: fresh model, fresh RNG
    torch.manual_seed(1234)
    log = T.train(resumed, examples(), collate, masked_ce, spec, seed=0, checkpoint_dir=ckpt)
    assert_same(adapter_weights(whole), adapter_weights(resumed))
    assert log["step"].tolist() == [1, 2, 3, 4]
    assert log["loss"].tolist() == whole_log["loss"].tolist()


def running_mean_loss(state, calls=None):
    """masked_ce scaled by a running mean of the past losses kept in `state` (as NAPO's margin):
    a resumed run only matches when the trainer restores the state."""
    count = {"n": 0}

    def loss_fn(model, batch):
        count["n"] += 1
        if calls is not None and count["n"] > calls:
            raise Crash
        loss, n, diagnostics = masked_ce(model, batch)
        state["mean"].mul_(0.5).add_(0.5 * float(loss.detach()))
        return loss * (1 + state["mean"]), n, diagnostics

    return loss_fn


@pytest.mark.parametrize("keep_state", [True, False])
def test_resume_restores_the_methods_state(tiny_model_dir, tmp_path, keep_state):
    spec = {**SPEC, "checkpoint_every": 1}
    whole_state = {"mean": torch.zeros(())}
    whole = lora(tiny_model_dir, spec)
    whole_log = T.train(whole, examples(), collate, running_mean_loss(whole_state), spec, seed=0,
                        hooks=T.Hooks(state=whole_state))
    ckpt = tmp_path / "adapter.ckpt"
    crashed_state = {"mean": torch.zeros(())}
    with pytest.raises(Crash):
        T.train(lora(tiny_model_dir, spec), examples(), collate, running_mean_loss(crashed_state, 5), spec, seed=0,
                checkpoint_dir=ckpt, hooks=T.Hooks(state=crashed_state))
    state = {"mean": torch.zeros(())}  # a fresh process: the state starts over unless restored
    resumed = lora(tiny_model_dir, spec)
    log = T.train(resumed, examples(), collate, running_mean_loss(state), spec, seed=0, checkpoint_dir=ckpt,
                  hooks=T.Hooks(state=state if keep_state else None))
    same = log["loss"].tolist() == whole_log["loss"].tolist()
    assert same == keep_state
    if keep_state:
        assert_same(adapter_weights(whole), adapter_weights(resumed))
        assert float(state["mean"]) == float(whole_state["mean"])


def test_checkpoint_of_another_run_is_not_resumed(tiny_model_dir, tmp_path):
    ckpt = tmp_path / "adapter.ckpt"
    run(tiny_model_dir, {**SPEC, "lr": 0.05}, checkpoint_dir=ckpt)  # finished, checkpoint left behind
    fresh, _ = run(tiny_model_dir, SPEC)
    again, log = run(tiny_model_dir, SPEC, checkpoint_dir=ckpt)
    assert len(log) == 4
    assert_same(adapter_weights(fresh), adapter_weights(again))


def test_adapter_saved_as_safetensors_and_reloads(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, log = run(tiny_model_dir, {**SPEC, "epochs": 1})
    out = T.save_adapter(model, tmp_path / "adapter", {"sft": SPEC}, log, seed=0)
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert (out / "training_config.json").exists() and (out / "train_log.parquet").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, out)
    ids, _, mask = collate(examples(2))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).logits,
                                   model(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=1e-6)
    trained = {n.replace(".default", ""): p for n, p in adapter_weights(model).items()}
    import safetensors.torch

    saved = safetensors.torch.load_file(out / "adapter_model.safetensors")
    assert len(saved) == len(trained)


def test_unknown_target_module_names_the_key(tiny_model_dir):
    with pytest.raises(ValueError, match="target_modules"):
        lora(tiny_model_dir, {**SPEC, "target_modules": ["no_such_proj"]})


def test_frozen_linears_in_bf16_change_nothing_under_autocast(tiny_model_dir):
    model = lora(tiny_model_dir)
    ids, _, mask = collate(examples(3))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=ids, attention_mask=mask).logits
    assert cast_frozen_linears(model, torch.bfloat16) == 2 * 7  # q,k,v,o,gate,up,down per layer
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(before, after)
    assert all(p.dtype == torch.float32 for p in adapter_weights(model).values())
    assert model.get_output_embeddings().weight.dtype == torch.float32


# --- validation and early stopping -------------------------------------------------------------

def scripted_validation(model, values, crash_at=None):
    """A validate hook returning `values[epochs_done - 1]` as hr@10 and recording the adapter after
    each epoch; raises Crash at `crash_at` (once)."""
    seen = {"weights": {}, "calls": []}

    def validate(epochs_done):
        seen["calls"].append(epochs_done)
        if crash_at is not None and epochs_done == crash_at and crash_at not in seen.setdefault("crashed", set()):
            seen["crashed"].add(crash_at)
            raise Crash
        seen["weights"][epochs_done] = adapter_weights(model)
        return {"hr@10": values[epochs_done - 1], "ndcg@10": values[epochs_done - 1] / 2}

    return validate, seen


# soft.early_stopping as config/schema.yaml completes it (test_early_stopping_defaults_are_the_schemas)
STOPPING = {"metric": "hr@10", "patience": 2, "min_delta": 0.0, "keep": "best"}
HR = [0.1, 0.3, 0.2, 0.3, 0.5, 0.6]  # best after epoch 2; epochs 3 and 4 do not beat it (4 ties)


@pytest.mark.parametrize("keep,kept", [("best", 2), ("last", 4)])
def test_early_stopping_stops_after_patience_and_keeps_the_chosen_epoch(tiny_model_dir, keep, kept):
    spec = {**SPEC, "epochs": 6, "early_stopping": {**STOPPING, "keep": keep}}
    model = lora(tiny_model_dir, spec)
    validate, seen = scripted_validation(model, HR)
    log = T.train(model, examples(), collate, masked_ce, spec, seed=0, hooks=T.Hooks(validate=validate))
    assert seen["calls"] == [1, 2, 3, 4]  # a tie is no improvement: stopped after epoch 4
    assert log["epoch"].max() == 4 and len(log) == 8
    assert_same(adapter_weights(model), seen["weights"][kept])
    assert log.groupby("epoch")["valid_hr@10"].first().tolist() == HR[:4]
    assert log["valid_ndcg@10"].iloc[-1] == HR[3] / 2
    assert log.attrs["validation"] == {"history": {str(e): {"hr@10": HR[e - 1], "ndcg@10": HR[e - 1] / 2}
                                                   for e in range(1, 5)},
                                       "best_epoch": 2, "epochs_trained": 4, "kept_epoch": kept}


def test_early_stopping_min_delta_and_no_stop_while_improving(tiny_model_dir):
    spec = {**SPEC, "epochs": 3, "early_stopping": {**STOPPING, "patience": 1, "min_delta": 0.05}}
    model = lora(tiny_model_dir, spec)
    validate, seen = scripted_validation(model, [0.1, 0.2, 0.3])
    log = T.train(model, examples(), collate, masked_ce, spec, seed=0, hooks=T.Hooks(validate=validate))
    assert seen["calls"] == [1, 2, 3] and log.attrs["validation"]["best_epoch"] == 3
    assert_same(adapter_weights(model), seen["weights"][3])
    model = lora(tiny_model_dir, spec)
    validate, seen = scripted_validation(model, [0.1, 0.14, 0.3])  # +0.04 is within min_delta
    T.train(model, examples(), collate, masked_ce, spec, seed=0, hooks=T.Hooks(validate=validate))
    assert seen["calls"] == [1, 2]
    assert_same(adapter_weights(model), seen["weights"][1])


def test_early_stopping_resumes_to_the_same_decision(tiny_model_dir, tmp_path):
    """Killed while validating epoch 3 (after epoch 2's best was recorded), rerun in a fresh
    process: same stop, same kept weights (the best epoch's, from the checkpoint), same log."""
    spec = {**SPEC, "epochs": 6, "early_stopping": STOPPING}
    whole = lora(tiny_model_dir, spec)
    validate, _ = scripted_validation(whole, HR)
    whole_log = T.train(whole, examples(), collate, masked_ce, spec, seed=0, hooks=T.Hooks(validate=validate))
    ckpt = tmp_path / "adapter.ckpt"
    killed = lora(tiny_model_dir, spec)
    validate, seen = scripted_validation(killed, HR, crash_at=3)
    with pytest.raises(Crash):
        T.train(killed, examples(), collate, masked_ce, spec, seed=0, checkpoint_dir=ckpt,
                hooks=T.Hooks(validate=validate))
    resumed = lora(tiny_model_dir, spec)
    validate, seen = scripted_validation(resumed, HR)
    log = T.train(resumed, examples(), collate, masked_ce, spec, seed=0, checkpoint_dir=ckpt,
                  hooks=T.Hooks(validate=validate))
    assert seen["calls"] == [3, 4]  # epochs 1 and 2 were validated before the kill
    assert_same(adapter_weights(whole), adapter_weights(resumed))
    assert log.drop(columns=["seconds", "tokens_per_s"]).equals(whole_log.drop(columns=["seconds", "tokens_per_s"]))
    assert log.attrs["validation"] == whole_log.attrs["validation"]
    # a finished run's checkpoint left behind: the rerun trains nothing and keeps the same weights
    again = lora(tiny_model_dir, spec)
    validate, seen = scripted_validation(again, HR)
    T.train(again, examples(), collate, masked_ce, spec, seed=0, checkpoint_dir=ckpt, hooks=T.Hooks(validate=validate))
    assert seen["calls"] == [] and len(seen["weights"]) == 0
    assert_same(adapter_weights(whole), adapter_weights(again))


def test_early_stopping_errors_name_the_problem(tiny_model_dir):
    spec = {**SPEC, "early_stopping": {**STOPPING, "patience": 1}}
    with pytest.raises(ValueError, match="no validation"):
        run(tiny_model_dir, spec)
    model = lora(tiny_model_dir, spec)
    validate, _ = scripted_validation(model, HR)
    with pytest.raises(ValueError, match="'hr@20'.*hr@10"):
        T.train(model, examples(), collate, masked_ce, {**spec, "early_stopping": {**STOPPING, "metric": "hr@20"}},
                seed=0, hooks=T.Hooks(validate=validate))
    with pytest.raises(ValueError, match="keep must be best or last"):
        T.train(model, examples(), collate, masked_ce, {**spec, "early_stopping": {**STOPPING, "keep": "x"}},
                seed=0, hooks=T.Hooks(validate=validate))


def test_early_stopping_defaults_are_the_schemas():
    """STOPPING is the block config/schema.yaml completes, and EarlyStopping's field defaults are the schema's."""
    import yaml

    from workflow.config import SCHEMA_PATH

    props = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["soft"]["properties"]["early_stopping"]["properties"]
    assert STOPPING == {key: props[key]["default"] for key in STOPPING}
    stopping = T.EarlyStopping.from_spec({"early_stopping": STOPPING}, T.Hooks(validate=lambda e: {}))
    assert stopping == T.EarlyStopping(props["metric"]["default"])
    with pytest.raises(ValueError, match="needs a metric"):
        T.EarlyStopping.from_spec({"early_stopping": {"patience": 2}}, T.Hooks(validate=lambda e: {}))
