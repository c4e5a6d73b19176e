"""`llm.compile` (workflow/llm/compiling.py): the compiled decoder gives the eager model's losses and
log-probs within bf16 rounding, the same adapters within float32 rounding after a few optimizer
steps of the real trainer, and the same artifacts on a rerun from the persistent cache.

The model is the tiny Llama of conftest (2 layers, hidden 64); one Inductor cache folder serves the
whole module, so the first test pays the cold compile (tens of seconds on 2 shared cores: marked
slow) and the others load its kernels. Prompts stay under one length bucket (64), batches equal, so
every call meets the same static shapes."""
from __future__ import annotations

import contextlib

import pytest
import torch

from conftest import assert_close_float32, assert_within
from workflow.llm import compiling, scoring, sft, train
from workflow.llm.model import cast_frozen_linears, load_model

pytestmark = pytest.mark.slow

LORA = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
SPEC = {**LORA, "epochs": 1, "lr": 0.01, "batch_size": 2, "grad_accum": 1, "warmup_ratio": 0.0,
        "weight_decay": 0.0, "max_grad_norm": 1.0, "checkpoint_every": 0}
BF16_U = 2.0 ** -8  # bf16 unit roundoff: 8 significand bits (7 stored), round to nearest
# Roundings to bf16 on one decoder layer's path under autocast, each where eager rounds and a fused
# compiled kernel may not (or the other way round): RMSNorm, q/k/v projections, RoPE, QK^T,
# softmax, AV, o_proj, residual add, RMSNorm, gate/up projections, SiLU * up, down, residual add.
ROUNDINGS_PER_LAYER = 13


def bf16_logprob_bound(model) -> float:
    """Bound on |compiled - eager| of a log-prob under bf16 autocast, derived, not fitted:
    each of the `depth` = 13 L + 2 roundings on the path to a logit (L layers, the final norm, the
    LM head) perturbs it by at most u = 2^-8 relative to the magnitude that flows through it, and
    the errors add (worst case, first order), so a logit z_v = W_v . h moves by at most
    depth * u * sum_i |W_vi h_i| <= depth * u * ||W_v|| ||h||. h is the final RMSNorm's output:
    ||h|| <= max|g| sqrt(d) (g the norm's weight). A log-prob z_t - logsumexp(z) moves by at most
    twice the largest logit move."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers, d = inner.config.num_hidden_layers, inner.config.hidden_size
    depth = ROUNDINGS_PER_LAYER * layers + 2
    h_norm = float(inner.model.norm.weight.abs().max()) * d ** 0.5
    w_norm = float(inner.get_output_embeddings().weight.float().norm(dim=1).max())
    return 2 * depth * BF16_U * w_norm * h_norm


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("compile-cache")


def lora_model(model_dir, seed=0):
    base, _ = load_model(model_dir, device="cpu", dtype="float32", attention="eager")
    return train.add_lora(base, LORA, seed=seed)


def examples(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"prompt": torch.randint(10, 1000, (20 + 3 * i,), generator=g).tolist(),
             "answer": torch.randint(10, 1000, (2 + i % 3,), generator=g).tolist()} for i in range(n)]


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_bucket_and_token_count():
    assert [compiling.bucket(n) for n in (1, 64, 65, 420)] == [64, 64, 128, 448]
    assert compiling.example_tokens({"sample_id": "s", "prompt": [1, 2, 3], "answers": [[4, 5], [6]]}) == 6
    with pytest.raises(ValueError, match="llm.compile"):
        compiling.decide("sometimes", torch.nn.Linear(2, 2))
    assert compiling.decide(False, torch.nn.Linear(2, 2)) is False


def test_auto_compiles_large_jobs_only(tiny_model_dir):
    model = lora_model(tiny_model_dir)
    assert not compiling.decide("auto", model, examples(), epochs=1)  # a few hundred tokens
    est = compiling.estimate(model, 1.0)
    break_even = est["compile"] / est["saved"]
    big = [{"prompt": [1] * int(break_even * 1.01)}]
    assert not compiling.decide("auto", model, big)  # float32 compute: eager whatever the work
    cast_frozen_linears(model, torch.bfloat16)
    assert compiling.decide("auto", model, big)


def test_padding_to_a_bucket_leaves_logprobs_unchanged(tiny_model_dir):
    model = lora_model(tiny_model_dir)
    batch = examples()
    ps, ans = [e["prompt"] for e in batch], [[e["answer"], e["answer"][::-1]] for e in batch]
    decoder = model.get_base_model().get_decoder()
    with torch.no_grad():
        plain = scoring.token_logprobs(model, ps, ans)[0]
        decoder.__dict__[compiling.ATTRIBUTE] = decoder  # the bucketed path, eager
        try:
            padded = scoring.token_logprobs(model, ps, ans)[0]
        finally:
            compiling.disable(model)
    # only the kernels' blocking changes with the row length: float32 rounding over the longest
    # accumulation, the vocabulary's logsumexp (conftest's rule)
    assert_close_float32(padded, plain, depth=49152, what="bucketed rows")


def test_compiled_loss_and_logprobs_within_bf16_rounding(tiny_model_dir, cache):
    model = lora_model(tiny_model_dir)
    batch = examples()[:SPEC["batch_size"]]  # the trainer's micro-batch shape: one compiled graph for both tests
    ps, ans = [e["prompt"] for e in batch], [e["answer"] for e in batch]
    with bf16():
        eager_lp, _ = scoring.answer_logprobs(model, ps, ans)
        eager_loss = sft.sft_loss(model, (ps, ans))[0]
    compiling.enable(model, cache)
    try:
        with bf16():
            compiled_lp, _ = scoring.answer_logprobs(model, ps, ans)
            compiled_loss = sft.sft_loss(model, (ps, ans))[0]
        compiled_loss.backward()  # the backward compiles too
    finally:
        compiling.disable(model)
    bound = bf16_logprob_bound(model)
    assert bound < 1.0, bound  # a meaningful bound on log-probs of about -ln(49152) = -10.8
    # summed log-probs of n tokens: n bounds; the loss is a token mean, so one bound
    n = torch.tensor([len(a) for a in ans], dtype=torch.float64)
    assert_within(compiled_lp.detach(), eager_lp.detach(), n * bound, "summed answer log-probs")
    assert_within(compiled_loss.detach(), eager_loss.detach(), bound, "SFT loss")
    assert compiling.graph_breaks() == {}, compiling.graph_breaks()


def run_trainer(model_dir, mode, cache, autocast=contextlib.nullcontext, seed=0):
    model = lora_model(model_dir, seed=seed)
    try:
        log = train.train(model, examples(), sft.collate, sft.sft_loss, SPEC, seed=seed, autocast=autocast,
                          compile_mode=mode, compile_cache=cache)
    finally:
        compiling.disable(model)
    return log, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_adapters_equal_eager_within_float32_rounding(tiny_model_dir, cache):
    """Two optimizer steps in float32 (no autocast): the compiled graph may fuse and reorder float32
    arithmetic only. Depth: conftest's rule, the longest accumulation (the vocabulary's logsumexp,
    49152 terms, as in test_scoring) for each of the two steps."""
    eager_log, eager = run_trainer(tiny_model_dir, "off", cache)
    compiled_log, compiled = run_trainer(tiny_model_dir, "on", cache)
    assert_close_float32(compiled_log["loss"].to_numpy(), eager_log["loss"].to_numpy(), depth=2 * 49152,
                         what="loss per step")
    for name in eager:
        assert_close_float32(compiled[name], eager[name], depth=2 * 49152, what=name)
    fresh = dict(lora_model(tiny_model_dir).named_parameters())
    assert any(not torch.equal(p, fresh[n]) for n, p in eager.items())  # the steps moved the adapter


def test_compiled_rerun_is_bitwise_identical(tiny_model_dir, cache):
    """Same config and seed, compiled twice (the second from the warm cache): the same adapter."""
    first_log, first = run_trainer(tiny_model_dir, "on", cache, bf16)
    second_log, second = run_trainer(tiny_model_dir, "on", cache, bf16)
    assert first_log["loss"].tolist() == second_log["loss"].tolist()
    for name in first:
        assert torch.equal(first[name], second[name]), name
