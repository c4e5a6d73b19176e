"""LLaRA's hybrid prompt and the llara / ilora runs (workflow/llm/llara.py) on a tiny Llama, fp32."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from test_sft import LLM, SFT, inputs, tables  # noqa: F401 (inputs is a fixture)
from workflow.llm import evaluate, llara, train
from workflow.llm.model import load_tokenizer
from workflow.llm.scoring import candidate_logprobs

D = 8
HYBRID = {**SFT, "epochs": 2, "projector_hidden": 16, "curriculum": "linear"}
ILORA = {**HYBRID, "n_experts": 2, "gate": "sequence", "router": "resnet", "router_lr_scale": 0.3}


@pytest.fixture
def surrogate(tmp_path):
    """A surrogate folder with the two tables the hybrid methods read (random vectors)."""
    samples, items = tables()
    rng = np.random.default_rng(0)
    folder = tmp_path / "surrogate"
    folder.mkdir()
    pd.DataFrame({"item_id": items["item_id"],
                  "embedding": list(rng.standard_normal((len(items), D)).astype(np.float32))}
                 ).to_parquet(folder / "item_embeddings.parquet")
    pd.DataFrame({"sample_id": samples["sample_id"],
                  "repr": list(rng.standard_normal((len(samples), D)).astype(np.float32))}
                 ).to_parquet(folder / "sequence_repr.parquet")
    return folder


def test_placeholder_after_every_listed_title_and_items_read_back(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    marker = llara.placeholder_id(tokenizer)
    samples, items = tables()
    for prompt in ("open", "candidate"):
        examples = llara.hybrid_examples(samples.head(2), items, tokenizer, "movie", LLM, prompt, marker)
        row = samples.iloc[0]
        n_listed = len(row.history) + (len(row.candidates) if prompt == "candidate" else 0)
        assert examples[0]["prompt"].count(marker) == n_listed
        assert examples[0]["items"] == list(row.history) + (list(row.candidates) if prompt == "candidate" else [])
        assert marker not in examples[0]["answer"]
        text = tokenizer.decode(examples[0]["prompt"])
        assert f"Alien (1970) {llara.PLACEHOLDER}\n" in text
    # the oldest history titles (and their placeholders) go first when the prompt is too long
    short = {**LLM, "max_prompt_tokens": len(examples[0]["prompt"]) - 3}
    clipped = llara.hybrid_examples(samples.head(1), items, tokenizer, "movie", short, "candidate", marker)
    assert clipped[0]["items"] == list(samples.iloc[0].history[1:]) + list(samples.iloc[0].candidates)


def test_placeholder_embeddings_are_the_projected_items_in_order():
    torch.manual_seed(0)
    projector = llara.build_projector(D, 16, 12)
    vectors = torch.randn(5, D)
    ids = torch.tensor([[3, 99, 4, 99, 5], [99, 6, 7, 8, 0]])
    embeds = torch.randn(2, 5, 12)
    got = llara.placeholder_embeds(projector, vectors, [[4, 1], [2]], marker_id=99)(ids, embeds)
    expected = embeds.clone()
    expected[0, 1], expected[0, 3], expected[1, 0] = projector(vectors[4]), projector(vectors[1]), projector(vectors[2])
    torch.testing.assert_close(got, expected)
    got.sum().backward()  # the projector learns through the replaced rows
    assert projector[0].weight.grad is not None and projector[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="placeholders per row"):
        llara.placeholder_embeds(projector, vectors, [[4], [2]], marker_id=99)(ids, embeds)


def test_curriculum_ramps_from_text_to_hybrid():
    total, per_epoch = 400, 200
    assert llara.hybrid_probability(0, total, per_epoch, "linear") == 0.0
    assert llara.hybrid_probability(300, total, per_epoch, "linear") == 0.75
    assert llara.hybrid_probability(250, total, per_epoch, "per_epoch") == 0.25
    assert llara.hybrid_probability(5, total, per_epoch, "hybrid") == 1.0
    draws = [llara.is_hybrid_step(s, llara.hybrid_probability(s, total, per_epoch, "linear"), seed=3)
             for s in range(total)]
    assert draws == [llara.is_hybrid_step(s, llara.hybrid_probability(s, total, per_epoch, "linear"), seed=3)
                     for s in range(total)]  # seeded per step: a resumed run draws the same
    assert sum(draws[:200]) < sum(draws[200:])
    assert abs(sum(draws) / total - 0.5) < 0.1



def test_authors_curriculum_restarts_every_epoch_and_tops_out_at_one_over_epochs():
    """(step_in_epoch / steps_per_epoch) / epochs: 5 epochs of 10 steps (total 50), by hand."""
    p = lambda step: llara.hybrid_probability(step, 50, 10, "authors")
    assert p(0) == 0.0
    assert p(5) == pytest.approx(0.5 / 5)  # half-way through epoch 1: 0.1
    assert p(9) == pytest.approx(0.9 / 5)  # the last step of an epoch: 0.18 < 1 / epochs
    assert p(10) == 0.0 and p(13) == pytest.approx(0.3 / 5)  # epoch 2 starts over
    assert p(49) == pytest.approx(0.18)
    # mean over the run: (0 + 1 + ... + 9) / 10 / 10 / 5 = 0.09, about 1 / (2 epochs)
    assert sum(p(s) for s in range(50)) / 50 == pytest.approx(0.09)
    assert llara.hybrid_probability(3, 7, 7, "authors") == pytest.approx(3 / 7)  # one epoch = per_epoch


def test_per_epoch_curriculum_restarts_the_full_ramp():
    """step_in_epoch / steps_per_epoch: 0 to 1 within every epoch (not the authors' 1 / epochs top)."""
    p = lambda step: llara.hybrid_probability(step, 50, 10, "per_epoch")
    assert [p(s) for s in (0, 5, 9, 10, 19, 45)] == pytest.approx([0.0, 0.5, 0.9, 0.0, 0.9, 0.5])
    assert sum(p(s) for s in range(50)) / 50 == pytest.approx(0.45)
    with pytest.raises(ValueError, match="authors"):
        llara.hybrid_probability(0, 50, 10, "worker_quirk")


def test_router_and_projector_get_their_own_optimizer_settings():
    """The router: 0.3 x lr and its own weight decay (authors 1e-5); the LoRA keeps the block's."""
    from workflow.config import validate_block

    block = validate_block("ilora", {"lr": 1e-3, "weight_decay": 0.0})
    assert block["router_weight_decay"] == 1e-5 and block["projector_weight_decay"] == 1e-5
    options = llara.param_options(block)
    assert options("ilora_router.3.body.0.weight") == {"lr_scale": 0.3, "weight_decay": 1e-5}
    assert options("hybrid_projector.0.weight") == {"weight_decay": 1e-5}
    assert options("model.layers.0.self_attn.q_proj.lora_A") == {}
    module = torch.nn.ModuleDict({"ilora_router": torch.nn.Linear(2, 2), "lora": torch.nn.Linear(2, 2)})
    groups = train.param_groups(dict(module.named_parameters()), block, options)
    by_first = {id(g["params"][0]): (g["lr"], g["weight_decay"], len(g["params"])) for g in groups}
    assert by_first[id(module["ilora_router"].weight)] == (pytest.approx(3e-4), 1e-5, 2)
    assert by_first[id(module["lora"].weight)] == (1e-3, 0.0, 2)

def run_args(tiny_model_dir, paths, surrogate, out, method, block):
    spec = {"llm": LLM, method: block, "domain": "movie", "prompt": "open"}
    return ["--method", method, "--model-dir", str(tiny_model_dir), "--samples", str(paths["samples"]),
            "--items", str(paths["items"]), "--selection", str(paths["selection"]), "--surrogate", str(surrogate),
            "--spec", json.dumps(spec), "--seed", "0", "--threads", "1", "--out", str(out)]


def weights(folder):
    from safetensors.torch import load_file

    return {f.name + ":" + k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize("method,block", [("llara", HYBRID), ("ilora", ILORA)])
def test_trains_saves_and_evaluation_reproduces_the_training_scorer(method, block, tiny_model_dir, inputs, surrogate,
                                                                     tmp_path):
    out = tmp_path / method / "adapter"
    assert llara.main(run_args(tiny_model_dir, inputs, surrogate, out, method, block)) == 0
    log = pd.read_parquet(out / "train_log.parquet")
    assert set(log["hybrid"]) <= {0.0, 1.0} and log.loc[0, "hybrid"] == 0.0  # step 0: probability 0
    saved = {f.name for f in out.iterdir()}
    assert {"projector.safetensors", "hybrid.json", "train_log.parquet"} <= saved
    assert ("experts.safetensors" in saved and "router.safetensors" in saved) if method == "ilora" \
        else "adapter_model.safetensors" in saved

    model, tokenizer, parts = llara.load_for_evaluation(tiny_model_dir, out, surrogate, "cpu", "float32", "eager")
    samples, items = tables()
    test = samples[samples["split"] == "test"].reset_index(drop=True)
    ins = evaluate.prompt_inputs(test, items, tokenizer, "movie", LLM, llara.PLACEHOLDER)
    hooks = llara.evaluation_hooks(parts, model, test, ins["open_prompt"], "open", surrogate)
    cached, _, _ = evaluate.prompt_passes(model, tokenizer, ins["open_prompt"], ins["answers"], batch_size=2,
                                          autocast=torch.autograd.grad_mode.no_grad, sample_hooks=hooks)
    # the training path: packed scorer with the same placeholder embeddings and gates
    embeds_fn, context = hooks([0, 1])
    with torch.no_grad(), context:
        packed, _ = candidate_logprobs(model, ins["open_prompt"], ins["answers"], inputs_embeds_fn=embeds_fn)
    np.testing.assert_allclose(cached, packed.numpy(), atol=1e-4, rtol=1e-4)
    # the hybrid parts matter: without the item embeddings the scores differ
    text_only, _, _ = evaluate.prompt_passes(model, tokenizer, ins["open_prompt"], ins["answers"], batch_size=2,
                                             autocast=torch.autograd.grad_mode.no_grad,
                                             sample_hooks=lambda rows: (None, hooks(rows)[1]))
    assert np.abs(cached - text_only).max() > 1e-4
    # generation continues from the hybrid prompt cache
    _, _, answers = evaluate.prompt_passes(model, tokenizer, ins["open_prompt"], max_new_tokens=3, batch_size=2,
                                           autocast=torch.autograd.grad_mode.no_grad, sample_hooks=hooks)
    assert len(answers) == 2


def test_ilora_gates_differ_by_sequence_and_uniform_has_no_router(tiny_model_dir, inputs, surrogate, tmp_path):
    out = tmp_path / "uniform" / "adapter"
    assert llara.main(run_args(tiny_model_dir, inputs, surrogate, out, "ilora", {**ILORA, "gate": "uniform"})) == 0
    assert not (out / "router.safetensors").exists()
    samples, _ = tables()
    seq = llara.gate_inputs("sequence", surrogate, ["s0", "s1"], D)
    assert seq.shape == (2, D) and not np.allclose(seq[0], seq[1])
    rnd = llara.gate_inputs("random", surrogate, ["s0", "s1"], D)
    np.testing.assert_array_equal(rnd, llara.gate_inputs("random", surrogate, ["s0", "s1"], D))
    assert llara.gate_inputs("uniform", surrogate, ["s0"], D) is None


def test_same_seed_same_adapter_and_resume_after_kill(tiny_model_dir, inputs, surrogate, tmp_path, monkeypatch):
    whole = tmp_path / "a" / "adapter"
    assert llara.main(run_args(tiny_model_dir, inputs, surrogate, whole, "ilora", ILORA)) == 0
    killed = tmp_path / "b" / "adapter"
    real = llara.make_loss_fn
    calls = {"n": 0}

    def dying(parts, state):
        loss_fn = real(parts, state)

        def wrapped(model, batch):
            calls["n"] += 1
            if calls["n"] > 5:
                raise KeyboardInterrupt
            return loss_fn(model, batch)
        return wrapped

    monkeypatch.setattr(llara, "make_loss_fn", dying)
    with pytest.raises(KeyboardInterrupt):
        llara.main(run_args(tiny_model_dir, inputs, surrogate, killed, "ilora", ILORA))
    assert (train.checkpoint_dir_for(killed) / train.CHECKPOINT_FILE).exists()
    monkeypatch.setattr(llara, "make_loss_fn", real)
    assert llara.main(run_args(tiny_model_dir, inputs, surrogate, killed, "ilora", ILORA)) == 0
    a, b = weights(whole), weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    log_a, log_b = pd.read_parquet(whole / "train_log.parquet"), pd.read_parquet(killed / "train_log.parquet")
    assert log_a["hybrid"].tolist() == log_b["hybrid"].tolist()


def test_missing_surrogate_tables_are_clear_errors(tiny_model_dir, inputs, tmp_path, capsys):
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert llara.main(run_args(tiny_model_dir, inputs, empty, tmp_path / "x" / "adapter", "llara", HYBRID)) != 0
    assert "item_embeddings.parquet" in capsys.readouterr().err
