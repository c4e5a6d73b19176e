"""The GPU path on a real GPU (`make gpu-check`): skipped, with the reason, where CUDA is missing.

- the packed, cached and separate (one forward per candidate) scorers agree in bf16, prompts of
  different lengths (left padding in the cache);
- one optimizer step of every trainer (sft, dmpo, llara, ilora, soft) on SmolLM2 on the GPU, every
  parameter on the GPU, the loss finite, the peak memory recorded;
- NF4 loading (bitsandbytes) and one step of a LoRA on it;
- the catalogue beam search, the semantic-ID tokens and one rere step (policy and frozen reference
  adapters) on the GPU.

Peak memory per case goes to $GPU_CHECK_OUT/gpu_memory.json when that is set (make gpu-check).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from workflow.config import validate_block

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=(
    "no CUDA device: torch {} ({}) sees none; run `make gpu-check` on a GPU node".format(
        torch.__version__, f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU build")))]

LORA = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "lr": 1e-4, "weight_decay": 0.0}
PEAKS: dict[str, float] = {}


def record(name: str) -> None:
    PEAKS[name] = torch.cuda.max_memory_allocated() / 2**20
    out = os.environ.get("GPU_CHECK_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu_memory.json").write_text(json.dumps(PEAKS, indent=2))
    print(f"{name}: peak {PEAKS[name]:.0f} MiB")


def prompts_and_answers(tokenizer, n: int = 4, k: int = 4):
    """Chat prompts of different lengths and k title answers each (real SmolLM2 tokens)."""
    from workflow.llm import prompts

    titles = ["Heat (1995)", "Fargo (1996)", "Alien (1979)", "Brazil (1985)", "Jaws (1975)", "Vertigo (1958)",
              "Casablanca (1942)", "Psycho (1960)"]
    ps, ans = [], []
    for i in range(n):
        history = titles[: 2 + i]
        ps.append(prompts.open_prompt_ids(tokenizer, history, "movie", max_title_tokens=24, max_prompt_tokens=512))
        ans.append([prompts.clipped_answer_ids(tokenizer, titles[(i + j) % len(titles)], 24) for j in range(k)])
    return ps, ans


@pytest.fixture(scope="module")
def smollm(embedded_model_dir):
    return embedded_model_dir


def test_scorers_agree_in_bf16_with_left_padding(smollm):
    from workflow.llm import scoring
    from workflow.llm.model import autocast, load_for_evaluation

    model, tokenizer = load_for_evaluation(smollm, device="cuda", dtype="bfloat16")
    ps, ans = prompts_and_answers(tokenizer)
    with torch.no_grad(), autocast("cuda", "bfloat16"):
        packed, _ = scoring.candidate_logprobs(model, ps, ans)
        cache = scoring.encode_prompts(model, ps, tokenizer.pad_token_id)  # left-padded prompts
        cached, _ = scoring.cached_candidate_logprobs(model, cache, ans)
        separate = torch.stack([torch.stack([
            torch.log_softmax(model(input_ids=torch.tensor([p + a], device="cuda")).logits[0, len(p) - 1:-1].float(),
                              -1).gather(1, torch.tensor(a, device="cuda")[:, None]).sum() for a in answers])
            for p, answers in zip(ps, ans)])
    # bf16 (8 mantissa bits): summed log-probs of ~8 tokens agree to a few hundredths between kernels
    torch.testing.assert_close(packed.float(), separate, atol=0.15, rtol=0.02)
    torch.testing.assert_close(cached.float(), separate, atol=0.15, rtol=0.02)
    assert (packed.argmax(1) == separate.argmax(1)).float().mean() >= 0.75
    record("scorers")


def one_step(model, loss_fn, batch, name: str):
    from workflow.llm import train
    from workflow.llm.model import autocast, model_device

    device = model_device(model)
    assert {p.device.type for p in model.parameters()} == {"cuda"}, name
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = train.lr_schedule(optimizer, 10, 0.0)
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    torch.cuda.reset_peak_memory_stats()
    row = train.train_step(model, [batch], loss_fn, optimizer, scheduler, params, 1.0,
                           lambda: autocast(device, compute), train.grad_scaler(device, compute))
    assert torch.isfinite(torch.tensor(row["loss"])), (name, row)
    record(name)
    return row


@pytest.mark.parametrize("method", ["sft", "dmpo", "soft", "llara", "ilora"])
def test_one_step_of_every_trainer(smollm, method):
    from workflow.llm import llara, preference, sft, soft, train
    from workflow.llm.model import cast_frozen_linears, load_for_training

    model, tokenizer, device, _ = load_for_training(smollm, validate_block("llm", {"device": "cuda",
                                                                                 "gradient_checkpointing": True}))
    ps, ans = prompts_and_answers(tokenizer, k=4)
    if method in ("sft", "soft", "dmpo"):
        model = train.add_lora(model, LORA, seed=0)
        cast_frozen_linears(model, next(p for p in model.parameters() if not p.requires_grad).dtype)
    if method == "sft":
        one_step(model, sft.sft_loss, (ps, [a[0] for a in ans]), method)
    elif method == "soft":
        one_step(model, soft.mixed_loss_fn(lambda: 0.5), (ps, [a[:2] for a in ans]), method)
    elif method == "dmpo":
        cfg = {"beta": 0.1, "gamma": 0.0}
        reference = torch.zeros(len(ps), 4)
        one_step(model, preference.make_loss_fn("dmpo", cfg), (ps, ans, reference), method)
    else:
        block = {**LORA, "n_experts": 4, "gate": "sequence", "router": "resnet", "projector_hidden": None}
        cfg = llara.hybrid_config(method, block, 64, model.config.hidden_size)
        items = [f"i{k}" for k in range(8)]
        model, parts = llara.attach(method, model, block, cfg, tokenizer, "surrogate",
                                    ({i: k for k, i in enumerate(items)}, torch.randn(8, 64)), seed=0)
        marker = llara.PLACEHOLDER
        from workflow.llm import prompts

        hp = [prompts.open_prompt_ids(tokenizer, ["Heat (1995)", "Fargo (1996)"], "movie", max_title_tokens=24,
                                      max_prompt_tokens=512, item_marker=marker) for _ in ps]
        batch = {"prompts": hp, "answers": [a[0] for a in ans], "items": [["i0", "i1"] for _ in hp],
                 "gate_inputs": torch.randn(len(hp), 64) if method == "ilora" else None}
        one_step(model, llara.make_loss_fn(parts, {"hybrid": True}), batch, method)


def test_nf4_loading_and_one_lora_step(smollm):
    pytest.importorskip("bitsandbytes", reason="llm.quantization needs bitsandbytes (envs/gpu.yaml)")
    from workflow.llm import sft, train
    from workflow.llm.model import cast_frozen_linears, is_quantized, load_for_training

    torch.cuda.reset_peak_memory_stats()
    model, tokenizer, _, _ = load_for_training(smollm, validate_block("llm", {"device": "cuda", "quantization": "nf4",
                                                                       "gradient_checkpointing": True}))
    quantized = [m for m in model.modules() if is_quantized(m)]
    assert quantized, "no 4-bit layer after an nf4 load"
    model = train.add_lora(model, LORA, seed=0)
    assert cast_frozen_linears(model, torch.bfloat16) >= 0  # skips the 4-bit layers
    assert all(is_quantized(m) for m in quantized)
    ps, ans = prompts_and_answers(tokenizer)
    one_step(model, sft.sft_loss, (ps, [a[0] for a in ans]), "nf4")


def test_compiled_step_and_scoring_match_eager(smollm, tmp_path):
    """llm.compile on CUDA (workflow/llm/compiling.py, default mode: no CUDA graphs, whose recording
    per new length the packed rows' changing shapes would repeat): the compiled decoder's SFT loss,
    one optimizer step and the scorer's log-probs against eager, within this file's bf16 tolerance."""
    from workflow.llm import compiling, scoring, sft, train
    from workflow.llm.model import autocast, cast_frozen_linears, load_for_training

    model, tokenizer, device, dtype = load_for_training(smollm, validate_block("llm", {"device": "cuda"}))
    model = train.add_lora(model, {**LORA, "lora_dropout": 0.0}, seed=0)
    cast_frozen_linears(model, dtype)
    ps, ans = prompts_and_answers(tokenizer, k=4)
    with torch.no_grad(), autocast(device, dtype):
        eager_lp, _ = scoring.candidate_logprobs(model, ps, ans)
        eager_loss = sft.sft_loss(model, (ps, [a[0] for a in ans]))[0]
    compiling.enable(model, tmp_path / "cache")
    try:
        with torch.no_grad(), autocast(device, dtype):
            compiled_lp, _ = scoring.candidate_logprobs(model, ps, ans)
        row = one_step(model, sft.sft_loss, (ps, [a[0] for a in ans]), "compiled-sft")
    finally:
        compiling.disable(model)
    torch.testing.assert_close(compiled_lp, eager_lp, atol=0.15, rtol=0.02)
    torch.testing.assert_close(torch.tensor(row["loss"]), eager_loss.float().cpu(), atol=0.05, rtol=0.02)
    assert compiling.graph_breaks() == {}, compiling.graph_breaks()


def test_catalogue_beam_search_on_the_gpu_matches_exhaustive_scores(smollm):
    """The tree-attention beam search on the GPU in bf16: at full width every item comes back once,
    each with its log-prob from the packed scorer (same dtype; bf16's rounding bounds the gap)."""
    from workflow.llm import catalogue, scoring
    from workflow.llm.model import autocast, load_for_evaluation

    model, tokenizer = load_for_evaluation(smollm, device="cuda", dtype="bfloat16")
    prompts, answers = prompts_and_answers(tokenizer, n=3, k=8)
    catalogue_answers = answers[0]
    trie = catalogue.catalogue_trie(catalogue_answers)
    cast = lambda: autocast("cuda", "bfloat16")  # noqa: E731
    torch.cuda.reset_peak_memory_stats()
    ranked = catalogue.beam_search(model, prompts, trie, width=len(catalogue_answers), top=len(catalogue_answers),
                                   autocast=cast)
    with torch.no_grad(), cast():
        expected, _ = scoring.candidate_logprobs(model, prompts, [catalogue_answers] * len(prompts))
    for row, (found, scores) in enumerate(zip(ranked.items, ranked.scores)):
        assert sorted(found) == list(range(len(catalogue_answers)))
        torch.testing.assert_close(torch.tensor(scores), expected[row, found].float().cpu(), rtol=0, atol=0.25)
    record("catalogue_beam_search")


def test_item_id_tokens_on_the_gpu(smollm, tmp_path):
    """The sid prompt's ID tokens added on the GPU: the resized embeddings on the model's device, the
    ID rows trained by PEFT's trainable tokens, every other row unchanged after a step."""
    from workflow.llm import train
    from workflow.llm.model import add_item_tokens, autocast, load_for_training
    from workflow.llm.scoring import answer_logprobs

    llm = validate_block("llm", {"device": "cuda", "dtype": "bfloat16"})
    model, tokenizer, device, dtype = load_for_training(smollm, llm)
    added = add_item_tokens(model, tokenizer, ["<a_0>", "<a_1>", "<b_0>", "<b_1>"])
    model = train.add_lora(model, {**LORA, "lora_dropout": 0.0}, 0, tokenizer)
    assert all(p.device.type == "cuda" for p in model.parameters())
    before = model.get_input_embeddings()(torch.arange(len(tokenizer), device=device)).detach().clone()
    optimizer = torch.optim.AdamW(train.param_groups({n: p for n, p in model.named_parameters() if p.requires_grad},
                                                     {**LORA, "lr": 1e-2, "token_lr_scale": 10.0}))
    prompt = tokenizer.encode("The user has watched <a_0><b_1>", add_special_tokens=False)
    with autocast(device, dtype):
        logprob, n = answer_logprobs(model, [prompt], [tokenizer.encode("<a_1><b_0>", add_special_tokens=False)])
    (-logprob.sum() / n.sum()).backward()
    optimizer.step()
    after = model.get_input_embeddings()(torch.arange(len(tokenizer), device=device)).detach()
    changed = (after - before).abs().sum(-1) > 0
    assert changed[added].all() and not changed[[i for i in range(len(tokenizer)) if i not in added]].any()
    record("item_id_tokens")


def test_one_rere_step_on_the_gpu(smollm, tmp_path):
    """rere on the GPU: the start adapter loaded twice (the trainable policy, the frozen reference),
    both on the GPU; one step of GRPO over the policy's constrained beam of 4 of 8 catalogue items,
    the loss finite, only the policy's weights moved."""
    from workflow.llm import catalogue_rl, train
    from workflow.llm.catalogue import beam_search, catalogue_trie
    from workflow.llm.inference import pad_id
    from workflow.llm.model import load_for_training
    from workflow.llm.preference import with_defaults

    llm = validate_block("llm", {"device": "cuda"})
    start, tokenizer, _, _ = load_for_training(smollm, llm)
    train.add_lora(start, {**LORA, "lora_dropout": 0.0}, seed=0).save_pretrained(tmp_path / "sft")
    model, tokenizer, _, _ = load_for_training(smollm, llm)
    model = catalogue_rl.attach_with_reference(model, tmp_path / "sft")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    prompts, answers = prompts_and_answers(tokenizer, n=2, k=8)
    catalogue = answers[0]  # 8 titles: the catalogue
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    reference = {n for n in before if f".{catalogue_rl.REFERENCE}." in n}
    assert reference and not any(p.requires_grad for n, p in model.named_parameters() if n in reference)
    loss_fn = catalogue_rl.make_loss_fn(with_defaults("rere", {"group_size": 4}), catalogue, pad_id(tokenizer))
    # each target the second item of the policy's own beam of 4: a beam that holds its target has
    # unequal rewards, so the policy learns
    model.eval()
    ranked = beam_search(model, prompts, catalogue_trie(catalogue), width=4, top=4, pad_id=pad_id(tokenizer))
    model.train()
    batch = catalogue_rl.collate([{"prompt": p, "target": items[1]} for p, items in zip(prompts, ranked.items)])
    one_step(model, loss_fn, batch, "rere")
    moved = {n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])}
    assert moved and not moved & reference
