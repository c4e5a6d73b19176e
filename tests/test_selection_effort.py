"""DEALRec effort on a tiny Llama with LoRA (workflow/selection/effort.py): batched per-sample
gradient norms against one backward per sample."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workflow.selection import effort
from workflow.selection.random_subset import candidate_pool


def prepared(model_dir, params="last_v_proj_B", target_modules=("q_proj", "v_proj"), random_b=True):
    spec = {"llm": {"dtype": "float32", "device": "cpu"}, "domain": "movie", "prompt": "open",
            "sft": {"lora_r": 4, "lora_alpha": 8, "target_modules": list(target_modules)},
            "selection": {"dealrec": {"effort": {"params": params}}}}
    model, _, matrices, autocast = effort.prepare_model(model_dir, effort.settings(spec), seed=0)
    if random_b:  # a fresh LoRA has B = 0, so every lora_A gradient would be 0: make them all count
        torch.manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn_like(p) * 0.2)
    return model, matrices, autocast


def token_examples(n=7, seed=0):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, 2000, size=int(rng.integers(3, 40))).tolist() for _ in range(n)]
    answers = [rng.integers(3, 2000, size=int(rng.integers(1, 6))).tolist() for _ in range(n)]
    return prompts, answers


def test_the_losses_are_transformers_causal_lm_loss_per_sample(tiny_model_dir):
    """Both effort losses against transformers' own causal-LM loss of each sample alone (no padding):
    labels = the whole sequence (the authors' `all`), or the answer with the prompt masked (-100)."""
    model, _, _ = prepared(tiny_model_dir)
    prompts, answers = token_examples(5, seed=3)
    with torch.no_grad():
        every = effort.all_token_losses(model, prompts, answers)
        answer = effort.answer_token_losses(model, prompts, answers)
        for b, (prompt, ans) in enumerate(zip(prompts, answers)):
            ids = torch.tensor([prompt + ans])
            assert every[b].item() == pytest.approx(model(input_ids=ids, labels=ids).loss.item(), rel=1e-5)
            labels = torch.tensor([[-100] * len(prompt) + ans])
            assert answer[b].item() == pytest.approx(model(input_ids=ids, labels=labels).loss.item(), rel=1e-5)


@pytest.mark.parametrize("params", ["last_v_proj_B", "all"])
@pytest.mark.parametrize("loss_tokens", ["all", "answer"])
def test_batched_norms_equal_one_backward_per_sample(tiny_model_dir, params, loss_tokens):
    model, matrices, autocast = prepared(tiny_model_dir, params)
    prompts, answers = token_examples()
    losses = effort.loss_fn(loss_tokens)
    examples = [{"prompt": p, "answer": a} for p, a in zip(prompts, answers)]
    batched = effort.effort_scores(model, matrices, losses, examples, batch_size=3, autocast=autocast)
    loop = effort.effort_loop(model, matrices, losses, prompts, answers, autocast).numpy()
    assert (loop > 0).all()
    np.testing.assert_allclose(batched, loop, rtol=1e-4)
    assert all(m.weight.grad is None for m in matrices.values())  # the batched path never touches .grad


def test_scores_do_not_depend_on_the_batch(tiny_model_dir):
    model, matrices, autocast = prepared(tiny_model_dir, "all")
    prompts, answers = token_examples(9, seed=2)
    examples = [{"prompt": p, "answer": a} for p, a in zip(prompts, answers)]
    losses = effort.loss_fn("all")
    one = effort.effort_scores(model, matrices, losses, examples, batch_size=1, autocast=autocast)
    many = effort.effort_scores(model, matrices, losses, examples, batch_size=9, autocast=autocast)
    # batch 9 pads to another length than batch 1 and runs other kernel shapes: float32 rounding
    # through the tiny model's forward and backward (about 10^3 eps of relative error), not equality
    np.testing.assert_allclose(one, many, rtol=1e-4)


def test_tracked_matrices(tiny_model_dir):
    model, matrices, _ = prepared(tiny_model_dir, "last_v_proj_B", random_b=False)
    (name, layer), = matrices.items()
    assert name.endswith("layers.1.self_attn.v_proj.lora_B.default") and layer.weight.requires_grad
    assert sum(p.requires_grad for p in model.parameters()) == 1  # backward stops at the last layer
    _, matrices, _ = prepared(tiny_model_dir, "all", random_b=False)
    assert len(matrices) == 2 * 2 * 2  # q and v of 2 layers, A and B each
    with pytest.raises(ValueError, match="needs a LoRA on v_proj"):
        prepared(tiny_model_dir, "last_v_proj_B", target_modules=("q_proj",))
    with pytest.raises(ValueError, match="effort.params"):
        effort.tracked_matrices(model, "first_q_proj")


def test_fresh_lora_effort_comes_from_b_only(tiny_model_dir):
    """lora_B = 0 at initialisation: the lora_A gradients vanish, `all` measures the B matrices."""
    model, matrices, autocast = prepared(tiny_model_dir, "all", random_b=False)
    prompts, answers = token_examples(3)
    losses = effort.loss_fn("all")
    with_a = effort.batch_grad_norms(model, matrices, losses, prompts, answers, autocast)
    b_only = {n: m for n, m in matrices.items() if ".lora_B." in n}
    # the same backward, with more tensors tracked: equal up to the order of the norm's float32 sum
    np.testing.assert_allclose(with_a, effort.batch_grad_norms(model, b_only, losses, prompts, answers, autocast),
                               rtol=1e-5)


def test_candidate_pool_is_seeded_and_capped():
    ids = np.array([f"s{k:03d}" for k in range(100)], dtype=object)
    pool = candidate_pool(ids, 10, seed=3)
    assert len(pool) == 10 and list(pool) == sorted(pool)
    assert list(candidate_pool(ids[::-1], 10, seed=3)) == list(pool)  # row order does not matter
    assert list(candidate_pool(ids, 10, seed=4)) != list(pool)
    assert len(candidate_pool(ids, None, seed=3)) == 100 and len(candidate_pool(ids, 500, seed=3)) == 100


def saved_adapter(model_dir, folder, lora_dropout):
    """A trained-looking PEFT adapter (non-zero B) on disk, as the sft stage saves one."""
    from workflow.llm import train
    from workflow.llm.model import load_model

    model, _ = load_model(model_dir, device="cpu", dtype="float32")
    model = train.add_lora(model, {"lora_r": 4, "lora_alpha": 8, "lora_dropout": lora_dropout,
                                   "target_modules": ["q_proj", "v_proj"]}, seed=5)
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.2)
    model.save_pretrained(folder, safe_serialization=True)
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def from_adapter(model_dir, adapter, mode="eval", params="all"):
    spec = {"llm": {"dtype": "float32", "device": "cpu"}, "domain": "movie", "prompt": "open",
            "sft": {"lora_r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
            "selection": {"dealrec": {"effort": {"params": params, "adapter": "sft", "mode": mode}}}}
    return effort.prepare_model(model_dir, effort.settings(spec), seed=0, adapter=adapter)


def test_sft_adapter_is_the_folder_the_rule_gives(tiny_model_dir, tmp_path):
    saved = saved_adapter(tiny_model_dir, tmp_path / "adapter", lora_dropout=0.05)
    model, _, matrices, autocast = from_adapter(tiny_model_dir, tmp_path / "adapter")
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[n], saved[n]) for n in saved)
    assert not model.training and len(matrices) == 2 * 2 * 2
    prompts, answers = token_examples(4)
    norms = effort.batch_grad_norms(model, matrices, effort.loss_fn("all"), prompts, answers, autocast)
    assert (norms > 0).all()
    with pytest.raises(ValueError, match="must be given"):
        effort.resolve_adapter("sft", None)
    with pytest.raises(ValueError, match="--adapter is for"):
        effort.resolve_adapter(None, tmp_path / "adapter")
    assert effort.resolve_adapter(None, None) is None and effort.resolve_adapter("/a/b", None) == "/a/b"


def test_train_mode_equals_eval_mode_without_lora_dropout(tiny_model_dir, tmp_path):
    """The authors' train mode: with lora_dropout 0 the same numbers as eval mode; with dropout the
    masks make it differ, reproducibly under the same torch seed."""
    prompts, answers = token_examples(5, seed=3)
    examples = [{"prompt": p, "answer": a} for p, a in zip(prompts, answers)]
    losses = effort.loss_fn("all")

    def scores(folder, mode, seed=0):
        model, _, matrices, autocast = from_adapter(tiny_model_dir, folder, mode)
        assert model.training == (mode == "train")
        torch.manual_seed(seed)
        return effort.effort_scores(model, matrices, losses, examples, batch_size=2, autocast=autocast)

    saved_adapter(tiny_model_dir, tmp_path / "no_dropout", lora_dropout=0.0)
    np.testing.assert_array_equal(scores(tmp_path / "no_dropout", "train"), scores(tmp_path / "no_dropout", "eval"))
    saved_adapter(tiny_model_dir, tmp_path / "dropout", lora_dropout=0.5)
    train_mode = scores(tmp_path / "dropout", "train")
    np.testing.assert_array_equal(train_mode, scores(tmp_path / "dropout", "train"))
    assert not np.allclose(train_mode, scores(tmp_path / "dropout", "eval"), rtol=1e-3)
    assert not np.array_equal(train_mode, scores(tmp_path / "dropout", "train", seed=1))
