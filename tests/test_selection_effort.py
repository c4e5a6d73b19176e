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
