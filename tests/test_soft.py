"""SOFT (workflow/llm/soft.py): self-distillation, the mixed loss and the self-adaptive curriculum,
on a tiny Llama with the real SmolLM2 tokenizer, fp32."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from test_sft import LLM, SFT, adapter_tensors, inputs, tables  # noqa: F401  (inputs: a fixture)
from test_train import collate as padded_hf_batch
from workflow.llm import losses, soft, train

SOFT = {**SFT, "alpha": 1.0, "probe_size": 3, "num_beams": 2, "max_new_tokens": 5}
SPEC = {"llm": LLM, "soft": SOFT, "evaluation": {"batch_size": 4}, "domain": "movie", "prompt": "open"}
TIMING = ["seconds", "tokens_per_s"]


@pytest.fixture
def distilled(inputs, tmp_path):
    """A self-distilled table by hand (the distill stage's output format), one answer empty."""
    answers = {"s0": "Heat (1971)", "s1": "", "s2": "Brazil (1973) or so", "s3": "nothing", "s4": "Jaws (1977)",
               "s6": "Psycho (1976)"}
    path = tmp_path / "self_distilled.parquet"
    pd.DataFrame({"sample_id": list(answers), "prompt": "open", "target": "i0", "answer": list(answers.values()),
                  "kind": "no_item"}).to_parquet(path)
    return path


def common_args(model_dir, paths, out, spec):
    return ["--model-dir", str(model_dir), "--samples", str(paths["samples"]), "--items", str(paths["items"]),
            "--selection", str(paths["selection"]), "--spec", json.dumps(spec), "--seed", "0", "--threads", "1",
            "--out", str(out)]


def train_args(model_dir, paths, distilled, out, spec=SPEC):
    return ["train", *common_args(model_dir, paths, out, spec), "--distilled", str(distilled)]


# --- the curriculum ---------------------------------------------------------------------------

def test_lambda_formula_and_clipping():
    assert soft.curriculum_lambda(10.0, 10.0, 1.0) == 1.0
    assert soft.curriculum_lambda(12.0, 10.0, 1.0) == 1.0  # farther than the untuned model: clipped at 1
    assert soft.curriculum_lambda(5.0, 10.0, 1.0) == pytest.approx(math.exp(-0.5))
    assert soft.curriculum_lambda(5.0, 10.0, 10.0) == pytest.approx(math.exp(-5.0))
    assert soft.curriculum_lambda(20.0, 10.0, 1e300) == 1.0  # no overflow
    with pytest.raises(ValueError, match="d_0"):
        soft.curriculum_lambda(1.0, 0.0, 1.0)


def test_hooks_epoch_one_at_one_and_large_alpha_keeps_one_until_d_reaches_d0():
    measured = []
    distances = [10.0, 12.0, 10.0, 9.99, 4.0]  # after 0, 1, 2, 3, 4 epochs

    def measure(epoch):
        measured.append(epoch)
        return distances[epoch]

    epoch_start, step_start, current = soft.curriculum_hooks(measure, alpha=1e6, steps_per_epoch=3)
    lambdas = []
    for epoch in range(5):
        values = epoch_start(epoch)
        assert values["d_0"] == 10.0 and values["d_e"] == distances[epoch]
        for step in range(3):
            step_start(epoch * 3 + step, 15)
            lambdas.append(current())
        assert current() == values["lambda_e"]
    assert lambdas[:9] == [1.0] * 9  # epoch 1 always; then while d_e >= d_0
    assert all(v < 1e-100 for v in lambdas[9:])  # below d_0 at alpha 1e6: lambda ~ 0
    assert measured == [0, 1, 2, 3, 4]  # each distance measured once


def test_hooks_keep_distances_for_the_same_run_only(tmp_path):
    memo = tmp_path / "ckpt" / soft.MEMO_FILE
    epoch_start, _, _ = soft.curriculum_hooks(lambda e: [8.0, 4.0][e], 1.0, 2, memo, "run-a")
    epoch_start(0), epoch_start(1)
    calls = []
    again, step_start, current = soft.curriculum_hooks(lambda e: calls.append(e) or 1.0, 1.0, 2, memo, "run-a")
    step_start(3, 4)  # a resume within epoch 2: lambda from the kept distances, nothing measured
    assert current() == pytest.approx(math.exp(-0.5)) and calls == []
    other, _, _ = soft.curriculum_hooks(lambda e: calls.append(e) or 1.0, 1.0, 2, memo, "run-b")
    assert other(0)["d_0"] == 1.0 and calls == [0]
    _, step_start, _ = soft.curriculum_hooks(lambda e: 1.0, 1.0, 2, tmp_path / "none.json", "run-c")
    with pytest.raises(ValueError, match="no probe distance of epoch 2"):
        step_start(2, 4)


def test_probe_set_is_seeded_sorted_and_order_free():
    ids = [f"s{k}" for k in range(50)]
    probes = soft.probe_set(ids, 8, seed=3)
    assert probes == sorted(probes) and len(set(probes)) == 8 and set(probes) <= set(ids)
    assert soft.probe_set(list(reversed(ids)), 8, seed=3) == probes
    assert soft.probe_set(ids, 8, seed=4) != probes
    assert soft.probe_set(ids[:5], 8, seed=3) == sorted(ids[:5])


# --- the mixed loss ---------------------------------------------------------------------------

def test_soft_mixed_ce_by_hand():
    true_lp, true_n = torch.tensor([-2.0, -4.0]), torch.tensor([2, 2])
    hat_lp, hat_n = torch.tensor([-1.0, -5.0]), torch.tensor([1, 3])
    loss, diagnostics = losses.soft_mixed_ce(true_lp, true_n, hat_lp, hat_n, 0.25)
    assert diagnostics == {"ce_true": pytest.approx(1.5), "ce_distilled": pytest.approx(1.5)}
    assert float(loss) == pytest.approx(0.75 * 6 / 4 + 0.25 * 6 / 4)
    loss, _ = losses.soft_mixed_ce(true_lp, true_n, torch.tensor([-1.0, -1.0]), hat_n, 0.5)
    assert float(loss) == pytest.approx(0.5 * 1.5 + 0.5 * 0.5)
    with pytest.raises(ValueError, match="lambda"):
        losses.soft_mixed_ce(true_lp, true_n, hat_lp, hat_n, 1.5)


def hf_answer_ce(model, prompts, answers):
    """Cross-entropy of the answers after their prompts by a plain forward with labels: -100 on the
    prompt and on padding (HF's token mean over the batch)."""
    ids, labels, mask = padded_hf_batch([{"prompt": p, "answer": a} for p, a in zip(prompts, answers)])
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def test_mixed_loss_is_the_weighted_sum_of_the_two_cross_entropies(tiny_model_dir, inputs, distilled):
    """Both answers on one packed prompt encoding give (1 - lambda) CE(y) + lambda CE(y_hat), each CE
    computed separately by a plain forward; lambda 0 is SFT's loss."""
    from workflow.llm.model import load_model
    from workflow.llm.data import read_training_samples
    from workflow.llm.sft import sft_loss

    model, tokenizer = load_model(tiny_model_dir, device="cpu", dtype="float32")
    samples = read_training_samples(inputs["samples"], inputs["selection"])
    answers = soft.read_distilled(distilled, samples, "open")
    examples = soft.soft_examples(samples, pd.read_parquet(inputs["items"]), answers, tokenizer, "movie", LLM, "open")
    batch = soft.collate(examples[:4])
    prompts, pairs = batch
    assert len({len(a[1]) for a in pairs}) > 1  # self-distilled answers of different lengths (one empty)
    with torch.no_grad():
        ce_true = hf_answer_ce(model, prompts, [a[0] for a in pairs])
        ce_hat = hf_answer_ce(model, prompts, [a[1] for a in pairs])
        for lam in (0.0, 0.3, 1.0):
            loss, weight, diagnostics = soft.mixed_loss_fn(lambda: lam)(model, batch)
            assert float(loss) == pytest.approx(float((1 - lam) * ce_true + lam * ce_hat), abs=1e-5)
            assert weight == 4 and diagnostics["ce_true"] == pytest.approx(float(ce_true), abs=1e-5)
        sft_value, _, _ = sft_loss(model, (prompts, [a[0] for a in pairs]))
        assert float(soft.mixed_loss_fn(lambda: 0.0)(model, batch)[0]) == pytest.approx(float(sft_value), abs=1e-6)


def test_examples_tokenise_both_answers_like_sft(tiny_model_dir, inputs, distilled, tmp_path):
    from workflow.llm import prompts
    from workflow.llm.model import load_tokenizer
    from workflow.llm.data import read_training_samples
    from workflow.llm.data import sft_examples

    tokenizer = load_tokenizer(tiny_model_dir)
    samples = read_training_samples(inputs["samples"], inputs["selection"])
    items = pd.read_parquet(inputs["items"])
    answers = soft.read_distilled(distilled, samples, "open")
    examples = soft.soft_examples(samples, items, answers, tokenizer, "movie", LLM, "open")
    plain = sft_examples(samples, items, tokenizer, "movie", LLM, "open")
    assert [e["prompt"] for e in examples] == [e["prompt"] for e in plain]
    assert [e["answers"][0] for e in examples] == [e["answer"] for e in plain]
    assert examples[0]["answers"][1] == prompts.answer_ids(tokenizer, "Heat (1971)")
    assert examples[1]["answers"][1] == [prompts.end_of_answer_id(tokenizer)]  # the empty answer
    with pytest.raises(ValueError, match="candidate prompt"):
        soft.read_distilled(distilled, samples, "candidate")
    table = pd.read_parquet(distilled)
    table[table["sample_id"] != "s3"].to_parquet(tmp_path / "short.parquet")
    with pytest.raises(ValueError, match=r"short.parquet: no self-distilled answer for 1 .*s3"):
        soft.read_distilled(tmp_path / "short.parquet", samples, "open")


# --- self-distillation ------------------------------------------------------------------------

def test_batched_beam_answers_equal_one_at_a_time(tiny_model_dir):
    from workflow.llm.model import load_for_evaluation
    from workflow.llm.data import sft_examples

    model, tokenizer = load_for_evaluation(tiny_model_dir, device="cpu", dtype="float32")
    samples, items = tables()
    examples = sft_examples(samples.head(5), items, tokenizer, "movie", LLM, "open")
    examples += sft_examples(samples.head(1), items, tokenizer, "movie", LLM, "candidate")  # a longer prompt
    prompt_ids = [e["prompt"] for e in examples]
    assert len({len(p) for p in prompt_ids}) > 2  # left padding in the batches
    beam = dict(num_beams=3, max_new_tokens=6)
    together = soft.beam_answers(model, tokenizer, prompt_ids, batch_size=4, **beam)
    alone = [soft.beam_answers(model, tokenizer, [p], batch_size=1, prompt_cache=False, **beam)[0] for p in prompt_ids]
    uncached = soft.beam_answers(model, tokenizer, prompt_ids, batch_size=4, prompt_cache=False, **beam)
    assert together == alone == uncached
    assert all(isinstance(a, str) and a for a in together)
    greedy = soft.beam_answers(model, tokenizer, prompt_ids[:2], batch_size=2, num_beams=1, max_new_tokens=6)
    assert greedy == [soft.beam_answers(model, tokenizer, [p], batch_size=1, num_beams=1, max_new_tokens=6)[0]
                      for p in prompt_ids[:2]]


def test_answer_kinds():
    titles = {"a": "Alien (1979)", "b": "Aliens (1986)", "c": "Heat (1995)"}
    answers = ["  alien   (1979) ", "I'd say Alien (1979)", "Aliens (1986)", "Heat (1995), Alien (1979)", "none", ""]
    kinds = soft.answer_kinds(answers, ["a", "a", "a", "c", "a", "b"], titles)
    assert kinds == ["target", "names_target", "other_item", "names_target", "no_item", "no_item"]
    table = pd.DataFrame({"kind": kinds, "answer": answers})
    stats = soft.distillation_stats(table).set_index("kind")
    assert stats.loc[list(soft.ANSWER_KINDS), "answers"].tolist() == [1, 2, 1, 2]
    assert stats.loc["distinct", "answers"] == 6 and stats.loc["target", "share"] == pytest.approx(1 / 6, abs=1e-4)


def test_distill_cli_writes_the_answers_and_their_kinds(tiny_model_dir, inputs, tmp_path):
    from workflow.llm import sft
    from test_sft import cli_args as sft_args

    adapter = tmp_path / "sft" / "adapter"
    sft_spec = {"llm": LLM, "sft": SFT, "domain": "movie", "prompt": "open"}
    assert sft.main(sft_args(tiny_model_dir, inputs, adapter, sft_spec)) == 0
    out, stats = tmp_path / "sft" / "self_distilled.parquet", tmp_path / "sft" / "self_distilled_stats.tsv"
    from workflow.selection.budget import run_budget

    run_budget(inputs["selection"], 4, 0, tmp_path / "selection-n4.parquet")  # a run's -n4 (its own step)
    subset = {**inputs, "selection": tmp_path / "selection-n4.parquet"}
    args = ["distill", *common_args(tiny_model_dir, subset, out, {**SPEC, "budget": 4}), "--adapter", str(adapter),
            "--stats", str(stats)]
    assert soft.main(args) == 0
    table = pd.read_parquet(out)
    assert list(table.columns) == ["sample_id", "prompt", "target", "answer", "kind"]
    assert len(table) == 4 and set(table["sample_id"]) <= {"s0", "s1", "s2", "s3", "s4", "s6"}
    assert (table["prompt"] == "open").all() and set(table["kind"]) <= set(soft.ANSWER_KINDS)
    counts = pd.read_csv(stats, sep="\t").set_index("kind")["answers"]
    assert counts[list(soft.ANSWER_KINDS)].sum() == 4


# --- training ---------------------------------------------------------------------------------

def test_train_cli_logs_the_curriculum_on_a_fixed_probe(tiny_model_dir, inputs, distilled, tmp_path, monkeypatch):
    """Epoch 1 trains at lambda 1; each epoch logs the d_e its lambda came from; every measurement
    answers the same probe prompts, in every run (alpha does not change the probe)."""
    probed = []
    real = soft.beam_answers

    def recording(model, tokenizer, prompt_ids, **kw):
        probed.append([list(p) for p in prompt_ids])
        return real(model, tokenizer, prompt_ids, **kw)

    monkeypatch.setattr(soft, "beam_answers", recording)
    out = tmp_path / "a" / "adapter"
    assert soft.main(train_args(tiny_model_dir, inputs, distilled, out)) == 0
    assert (out / "adapter_model.safetensors").is_file() and not train.checkpoint_dir_for(out).exists()
    log = pd.read_parquet(out / "train_log.parquet")
    per_epoch = log.groupby("epoch")[["d_0", "d_e", "lambda_e"]].nunique()
    assert (per_epoch == 1).all().all()  # set once per epoch
    first, second = log[log["epoch"] == 1].iloc[0], log[log["epoch"] == 2].iloc[0]
    assert first["lambda_e"] == 1.0 and first["d_e"] == first["d_0"]
    assert second["lambda_e"] == pytest.approx(soft.curriculum_lambda(second["d_e"], first["d_0"], 1.0))
    assert {"ce_true", "ce_distilled"} <= set(log.columns)
    config = json.loads((out / "training_config.json").read_text())["config"]
    assert len(config["probe"]) == 3 and config["lambda_e"] == [1.0, second["lambda_e"]]

    assert len(probed) == 2 and probed[0] == probed[1]  # d_0 and d_1 on the same prompts
    other = tmp_path / "b" / "adapter"
    assert soft.main(train_args(tiny_model_dir, inputs, distilled, other,
                                {**SPEC, "soft": {**SOFT, "alpha": 100.0}})) == 0
    assert len(probed) == 4 and all(p == probed[0] for p in probed)
    assert pd.read_parquet(other / "train_log.parquet")["d_0"].iloc[0] == first["d_0"]


def test_resume_gives_the_same_adapter_and_lambda_history(tiny_model_dir, inputs, distilled, tmp_path, monkeypatch):
    whole = tmp_path / "whole" / "adapter"
    assert soft.main(train_args(tiny_model_dir, inputs, distilled, whole)) == 0
    expected = pd.read_parquet(whole / "train_log.parquet").drop(columns=TIMING)

    measured = []
    real_distance = soft.probe_distance

    def counting(*args, **kw):
        measured.append(kw["base"])
        return real_distance(*args, **kw)

    def dies_at(call):
        def probe(*args, **kw):
            if len(measured) + 1 == call:
                raise KeyboardInterrupt  # a kill while measuring
            return counting(*args, **kw)
        return probe

    killed = tmp_path / "killed" / "adapter"
    # killed while measuring d_1 (after epoch 1's checkpoint): the resume measures only d_1
    monkeypatch.setattr(soft, "probe_distance", dies_at(2))
    with pytest.raises(KeyboardInterrupt):
        soft.main(train_args(tiny_model_dir, inputs, distilled, killed))
    assert measured == [True]
    # killed within epoch 2 (a checkpoint every step): the resume measures nothing
    monkeypatch.setattr(soft, "probe_distance", counting)
    calls = {"n": 0}
    real_loss_fn = soft.mixed_loss_fn

    def dies_in_epoch_two(current):
        loss_fn = real_loss_fn(current)

        def wrapped(model, batch):
            calls["n"] += 1
            if calls["n"] > 2:  # epoch 2's first step (2 micro-batches) passes and is checkpointed
                raise KeyboardInterrupt
            return loss_fn(model, batch)
        return wrapped

    monkeypatch.setattr(soft, "mixed_loss_fn", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        soft.main(train_args(tiny_model_dir, inputs, distilled, killed))
    assert measured == [True, False]
    monkeypatch.setattr(soft, "mixed_loss_fn", real_loss_fn)
    assert soft.main(train_args(tiny_model_dir, inputs, distilled, killed)) == 0
    assert measured == [True, False]
    assert not train.checkpoint_dir_for(killed).exists()
    for name, tensor in adapter_tensors(whole).items():
        assert torch.equal(tensor, adapter_tensors(killed)[name]), name
    got = pd.read_parquet(killed / "train_log.parquet").drop(columns=TIMING)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_bad_inputs_are_clear_errors(tiny_model_dir, inputs, distilled, tmp_path, capsys):
    out = tmp_path / "adapter"
    assert soft.main(train_args(tiny_model_dir, inputs, distilled, out, {**SPEC, "prompt": "candidate"})) == 1
    assert "self_distilled.parquet: answers to the open prompt" in capsys.readouterr().err
    assert soft.main(train_args(tiny_model_dir, inputs, distilled, out, {**SPEC, "soft": {**SOFT, "alpha": 0}})) == 1
    assert "alpha" in capsys.readouterr().err
    assert not out.exists()
    assert np.isfinite(soft.curriculum_lambda(1.0, 2.0, 1.0))


def test_probe_answers_on_a_merged_copy_and_leaves_the_training_model_alone(tiny_model_dir, monkeypatch):
    """The probe's answers come from a merged copy (no LoRA layers, the no-grad attention) whose
    answers equal the adapter model's; the training model keeps its adapter, attention and RNG."""
    from workflow.llm.model import load_model
    from workflow.llm.data import sft_examples

    model, tokenizer = load_model(tiny_model_dir, device="cpu", dtype="float32", attention="eager")
    model = train.add_lora(model, SOFT, seed=0)
    with torch.no_grad():  # a trained-looking adapter: lora_B is zero at initialisation
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    samples, items = tables()
    prompt_ids = [e["prompt"] for e in sft_examples(samples.head(3), items, tokenizer, "movie", LLM, "open")]
    beam = dict(num_beams=2, max_new_tokens=4, batch_size=2)
    merged = soft.generation_model(model, torch.float32, "sdpa")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert merged.config._attn_implementation == "sdpa" and model.config._attn_implementation == "eager"
    assert any(p.requires_grad for p in model.parameters())
    model.eval()
    assert soft.beam_answers(merged, tokenizer, prompt_ids, **beam) == soft.beam_answers(model, tokenizer, prompt_ids,
                                                                                           **beam)
    base = soft.generation_model(model, torch.float32, base=True)
    with model.disable_adapter():
        assert soft.beam_answers(base, tokenizer, prompt_ids, **beam) == soft.beam_answers(model, tokenizer,
                                                                                             prompt_ids, **beam)
    seen = []
    real = soft.beam_answers
    monkeypatch.setattr(soft, "beam_answers", lambda m, *a, **kw: seen.append(m) or real(m, *a, **kw))
    rng = torch.get_rng_state()
    titles = np.zeros((3, model.config.hidden_size), dtype=np.float32)
    d = soft.probe_distance(model, tokenizer, prompt_ids, titles, base=False, implementation="sdpa", **beam)
    assert torch.equal(torch.get_rng_state(), rng)  # measuring draws nothing the training sees
    assert np.isfinite(d) and seen[0] is not model and "lora" not in str(type(seen[0])).lower()


def test_report_draws_the_curriculum_beside_the_loss():
    from workflow import report

    steps = np.arange(1, 7)
    curriculum = pd.DataFrame({"step": steps, "loss": np.linspace(2, 1, 6), "d_0": 30.0,
                               "d_e": [30.0] * 3 + [24.0] * 3, "lambda_e": [1.0] * 3 + [0.82] * 3})
    fig = report.loss_curves({"soft-open / random": curriculum,
                              "sft-open / random": curriculum[["step", "loss"]]}, "tiny")
    soft_panel, sft_panel = fig.axes[0], fig.axes[1]
    twins = [ax for ax in fig.axes[2:] if ax.bbox.bounds == soft_panel.bbox.bounds]
    assert len(twins) == 1 and [t.get_text() for t in twins[0].get_legend().get_texts()] == ["lambda_e", "d_e / d_0"]
    assert not [ax for ax in fig.axes[2:] if ax.bbox.bounds == sft_panel.bbox.bounds]


# --- early stopping on the validation split --------------------------------------------------

def test_early_stopping_validates_by_the_evaluations_grounded_protocol(tiny_model_dir, inputs, distilled, tmp_path):
    """Each epoch is validated by the grounded protocol on the valid split; the kept adapter's
    validation values are what the evaluation stage reports for it on that split."""
    from workflow.llm import evaluate, grounding

    samples = pd.read_parquet(inputs["samples"])
    samples.loc[samples["split"] == "test", "split"] = "valid"
    samples.to_parquet(inputs["samples"])
    emb = tmp_path / "title_embeddings.parquet"
    assert grounding.main(["--model-dir", str(tiny_model_dir), "--items", str(inputs["items"]), "--out", str(emb),
                           "--dtype", "float32", "--threads", "1"]) == 0
    stopping = {"metric": "ndcg@10", "patience": 1, "samples": None}
    spec = {**SPEC, "soft": {**SOFT, "epochs": 3, "lr": 0.05, "early_stopping": stopping}}
    out = tmp_path / "soft" / "adapter"
    assert soft.main([*train_args(tiny_model_dir, inputs, distilled, out, spec), "--title-embeddings", str(emb)]) == 0
    validation = json.loads((out / "training_config.json").read_text())["config"]["validation"]
    history = validation["history"]
    trained = validation["epochs_trained"]
    assert list(history) == [str(e) for e in range(1, trained + 1)]
    assert set(history["1"]) == {f"{m}@{k}" for m in ("hr", "ndcg") for k in (1, 5, 10, 20)}
    values = [history[str(e)]["ndcg@10"] for e in range(1, trained + 1)]
    best = int(np.argmax(values)) + 1  # the first best
    assert validation["best_epoch"] == validation["kept_epoch"] == best
    assert trained == 3 or values[-1] <= values[-2]  # stopped only after an epoch without improvement
    log = pd.read_parquet(out / "train_log.parquet")
    assert log.groupby("epoch")["valid_ndcg@10"].first().tolist() == values

    evaluation = {"protocols": ["grounded"], "splits": ["valid"], "generation_samples": None, "batch_size": 4}
    argv = ["--model-dir", str(tiny_model_dir), "--adapter", str(out), "--samples", str(inputs["samples"]),
            "--items", str(inputs["items"]), "--title-embeddings", str(emb),
            "--spec", json.dumps({"llm": SPEC["llm"], "evaluation": evaluation, "domain": "movie", "prompt": "open"}),
            "--dataset", "toy", "--run", "soft-open", "--selection", "random", "--seed", "0", "--threads", "1",
            "--predictions", str(tmp_path / "pred.parquet"), "--metrics", str(tmp_path / "metrics.parquet")]
    assert evaluate.main(argv) == 0
    reported = pd.read_parquet(tmp_path / "metrics.parquet").groupby("metric")["value"].mean()
    for metric, value in history[str(best)].items():
        assert reported[metric] == pytest.approx(value, abs=1e-9), metric


def test_early_stopping_needs_the_title_embeddings_and_the_open_prompt(tiny_model_dir, inputs, distilled, tmp_path,
                                                                     capsys):
    spec = {**SPEC, "soft": {**SOFT, "early_stopping": {"metric": "hr@10"}}}
    out = tmp_path / "adapter"
    assert soft.main(train_args(tiny_model_dir, inputs, distilled, out, spec)) == 1
    assert "pass --title-embeddings" in capsys.readouterr().err
    bad = {**SPEC, "soft": {**SOFT, "early_stopping": {"metric": "mrr"}}}
    assert soft.main(train_args(tiny_model_dir, inputs, distilled, out, bad)) == 1
    assert "early_stopping.metric" in capsys.readouterr().err
    assert not out.exists()
