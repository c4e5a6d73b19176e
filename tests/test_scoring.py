"""The shared-prefix scorer against the obvious reference: each candidate as its own unpadded
prompt+answer forward pass through the model's own forward (full logits, log_softmax, gather)."""
import pytest
import torch
from transformers import AutoModelForCausalLM

from workflow.llm import scoring

ATOL = 1e-4



def _rand_ids(gen, n):
    return torch.randint(3, 2000, (n,), generator=gen).tolist()


@pytest.fixture(scope="module")
def batch():
    """3 samples, prompts of different lengths, 4 candidates of different answer lengths (1 to 6)."""
    gen = torch.Generator().manual_seed(0)
    prompts = [_rand_ids(gen, n) for n in (9, 15, 4)]
    lengths = [(1, 4, 2, 6), (3, 3, 5, 1), (2, 6, 1, 4)]
    answers = [[_rand_ids(gen, n) for n in ls] for ls in lengths]
    return prompts, answers


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()


def reference_token_logprobs(model, prompt, answer):
    ids = torch.tensor([prompt + answer])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    P = len(prompt)
    return torch.stack([logp[P - 1 + t, tok] for t, tok in enumerate(answer)])


def reference_logprobs(model, prompts, answers):
    return torch.stack([torch.stack([reference_token_logprobs(model, p, a).sum() for a in answers_b])
                        for p, answers_b in zip(prompts, answers)])


def test_pack_layout():
    packed = scoring.pack([[10, 11, 12]], [[[20, 21], [30], [40, 41, 42]]], pad_id=0)
    assert packed.input_ids.tolist() == [[10, 11, 12, 20, 40, 41]]  # last answer tokens are never inputs
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 3, 4]]
    assert packed.segment.tolist() == [[0, 0, 0, 1, 3, 3]]
    assert packed.pred_index[0].tolist() == [[2, 3, 0], [2, 0, 0], [2, 4, 5]]
    assert packed.mask[0].sum(-1).tolist() == [2, 1, 3]
    mask = scoring.block_mask(packed.segment, "sdpa")[0, 0].int().tolist()
    assert mask == [[1, 0, 0, 0, 0, 0],
                    [1, 1, 0, 0, 0, 0],
                    [1, 1, 1, 0, 0, 0],
                    [1, 1, 1, 1, 0, 0],
                    [1, 1, 1, 0, 1, 0],
                    [1, 1, 1, 0, 1, 1]]


def test_pack_pads_right_with_pad_id():
    packed = scoring.pack([[5, 6, 7, 8], [9]], [[[1, 2]], [[3, 4]]], pad_id=2)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 1], [9, 3, 2, 2, 2]]
    assert packed.segment.tolist() == [[0, 0, 0, 0, 1], [0, 1, -1, -1, -1]]


def test_matches_per_candidate_forward(model, batch):
    prompts, answers = batch
    with torch.no_grad():
        logp, n = scoring.candidate_logprobs(model, prompts, answers)
        ref = reference_logprobs(model, prompts, answers)
    assert logp.shape == (3, 4) and logp.dtype == torch.float32
    assert n.tolist() == [[len(a) for a in ans] for ans in answers]
    torch.testing.assert_close(logp, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_concat_reference_path_matches(model, batch, padding_side):
    prompts, answers = batch
    with torch.no_grad():
        logp, n = scoring.concat_candidate_logprobs(model, prompts, answers, padding_side=padding_side)
        ref = reference_logprobs(model, prompts, answers)
    torch.testing.assert_close(logp, ref, atol=ATOL, rtol=0)
    assert n.tolist() == [[len(a) for a in ans] for ans in answers]


def test_token_logprobs_per_token(model, batch):
    prompts, answers = batch
    with torch.no_grad():
        token_lp, mask = scoring.token_logprobs(model, prompts, answers)
        for b, (p, ans) in enumerate(zip(prompts, answers)):
            for c, a in enumerate(ans):
                torch.testing.assert_close(token_lp[b, c, : len(a)], reference_token_logprobs(model, p, a),
                                           atol=ATOL, rtol=0)
                assert mask[b, c].sum() == len(a) and (token_lp[b, c, len(a):] == 0).all()


def test_batching_does_not_change_results(model, batch):
    prompts, answers = batch
    with torch.no_grad():
        together, _ = scoring.candidate_logprobs(model, prompts, answers)
        alone = torch.cat([scoring.candidate_logprobs(model, [p], [a])[0] for p, a in zip(prompts, answers)])
    torch.testing.assert_close(together, alone, atol=ATOL, rtol=0)


def test_eager_attention(tiny_model_dir, batch):
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    prompts, answers = batch
    with torch.no_grad():
        torch.testing.assert_close(scoring.candidate_logprobs(eager, prompts, answers)[0],
                                   reference_logprobs(eager, prompts, answers), atol=ATOL, rtol=0)


def test_gradients_equal_concat_path(tiny_model_dir, batch):
    """Full-parameter gradients of a weighted sum of log-probs: packed == one sequence per candidate."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).train()  # dropout is 0 in LlamaConfig
    prompts, answers = batch
    weights = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))

    def grads(fn):
        model.zero_grad()
        (fn(model, prompts, answers)[0] * weights).sum().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    packed, concat = grads(scoring.candidate_logprobs), grads(scoring.concat_candidate_logprobs)
    for name in packed:
        torch.testing.assert_close(packed[name], concat[name], atol=1e-4, rtol=1e-3, msg=name)


def test_peft_lora_model(tiny_model_dir, batch):
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                        init_lora_weights=False)  # random B: the adapter changes the outputs
    torch.manual_seed(0)
    model = get_peft_model(base, config)
    prompts, answers = batch
    weights = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))

    def lora_grads(fn):
        model.zero_grad()
        logp = fn(model, prompts, answers)[0]
        (logp * weights).sum().backward()
        return logp.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}

    logp, packed = lora_grads(scoring.candidate_logprobs)
    _, concat = lora_grads(scoring.concat_candidate_logprobs)
    with torch.no_grad():
        torch.testing.assert_close(logp, reference_logprobs(model, prompts, answers), atol=ATOL, rtol=0)
        with model.disable_adapter():
            assert (scoring.candidate_logprobs(model, prompts, answers)[0] - logp).abs().max() > 1e-3
    assert packed and all(k.endswith(("lora_A.default.weight", "lora_B.default.weight")) for k in packed)
    for name in packed:
        torch.testing.assert_close(packed[name], concat[name], atol=1e-4, rtol=1e-3, msg=name)


def test_inputs_embeds_hook_replaces_placeholders(model, batch):
    """The iLoRA hook: a placeholder token's embedding replaced by a given vector, per sample."""
    prompts, answers = batch
    placeholder = 7
    prompts = [p[:2] + [placeholder] + p[2:] for p in prompts]
    vectors = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    seen = []

    def hook(input_ids, embeds):
        seen.append(input_ids.shape)
        where = input_ids == placeholder
        return torch.where(where[..., None], vectors[:, None, :].expand_as(embeds), embeds)

    with torch.no_grad():
        logp, _ = scoring.candidate_logprobs(model, prompts, answers, inputs_embeds_fn=hook)
        for b, (p, ans) in enumerate(zip(prompts, answers)):
            for c, a in enumerate(ans):
                ids = torch.tensor([p + a])
                emb = model.get_input_embeddings()(ids)
                emb[0, 2] = vectors[b]
                lp = torch.log_softmax(model(inputs_embeds=emb).logits[0].float(), -1)
                ref = sum(lp[len(p) - 1 + t, tok] for t, tok in enumerate(a))
                assert abs(float(logp[b, c] - ref)) < ATOL
    assert seen and seen[0][0] == 3  # batch dimension = samples


def test_answer_logprobs_is_single_candidate(model, batch):
    prompts, answers = batch
    single = [a[1] for a in answers]
    with torch.no_grad():
        logp, n = scoring.answer_logprobs(model, prompts, single)
        full, _ = scoring.candidate_logprobs(model, prompts, answers)
    assert logp.shape == (3,) and n.tolist() == [len(a) for a in single]
    torch.testing.assert_close(logp, full[:, 1], atol=ATOL, rtol=0)


def test_bf16_autocast_runs_close_to_fp32(model, batch):
    prompts, answers = batch
    with torch.no_grad():
        fp32, _ = scoring.candidate_logprobs(model, prompts, answers)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16, _ = scoring.candidate_logprobs(model, prompts, answers)
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() < 0.5


def test_bad_input_errors(model):
    with pytest.raises(ValueError, match="same number"):
        scoring.candidate_logprobs(model, [[1, 2], [3]], [[[4]], [[5], [6]]])
    with pytest.raises(ValueError, match="sample 0: empty answer"):
        scoring.candidate_logprobs(model, [[1, 2]], [[[]]])
    with pytest.raises(ValueError, match="empty prompt"):
        scoring.candidate_logprobs(model, [[]], [[[1]]])
    with pytest.raises(ValueError, match="2 prompts but 1"):
        scoring.candidate_logprobs(model, [[1], [2]], [[[1]]])
    with pytest.raises(ValueError, match="4D mask"):
        scoring.block_mask(torch.zeros(1, 3, dtype=torch.long), "flash_attention_2")


# ---------------------------------------------------------------------------------------------
# the evaluation path: one prompt cache for candidate scoring and generation

@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cached_scoring_matches_per_candidate_forward(tiny_model_dir, batch, attn):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn).eval()
    prompts, answers = batch
    with torch.no_grad():
        cache = scoring.encode_prompts(model, prompts)
        token_lp, mask = scoring.cached_token_logprobs(model, cache, answers)
        logp, n = scoring.cached_candidate_logprobs(model, cache, answers)
        for b, (p, ans) in enumerate(zip(prompts, answers)):
            for c, a in enumerate(ans):
                torch.testing.assert_close(token_lp[b, c, : len(a)], reference_token_logprobs(model, p, a),
                                           atol=ATOL, rtol=0)
                assert mask[b, c].sum() == len(a) and (token_lp[b, c, len(a):] == 0).all()
        torch.testing.assert_close(logp, reference_logprobs(model, prompts, answers), atol=ATOL, rtol=0)
    assert n.tolist() == [[len(a) for a in ans] for ans in answers]


def test_cache_survives_scoring_and_greedy_generation_equals_plain_generate(model, batch):
    """Scoring copies the cache; generate continuing from it gives the tokens a fresh generate gives."""
    prompts, answers = batch
    with torch.no_grad():
        cache = scoring.encode_prompts(model, prompts)
        length_before = cache.past.get_seq_length()
        scoring.cached_candidate_logprobs(model, cache, answers)
        assert cache.past.get_seq_length() == length_before == max(map(len, prompts)) - 1
        kwargs = dict(do_sample=False, max_new_tokens=5, pad_token_id=2, eos_token_id=None)
        reused = model.generate(input_ids=cache.input_ids, attention_mask=cache.attention_mask,
                                past_key_values=cache.past, **kwargs)
        fresh = model.generate(input_ids=cache.input_ids, attention_mask=cache.attention_mask, **kwargs)
        for b, p in enumerate(prompts):  # and each equals generating from the unpadded prompt alone
            alone = model.generate(input_ids=torch.tensor([p]), **kwargs)
            assert reused[b, -5:].tolist() == alone[0, -5:].tolist()
    assert reused.tolist() == fresh.tolist()


def test_cached_scoring_bad_input(model):
    with pytest.raises(ValueError, match="at least 2 tokens"):
        scoring.encode_prompts(model, [[5, 6], [7]])
    cache = scoring.encode_prompts(model, [[5, 6, 7]])
    with pytest.raises(ValueError, match="2 candidate lists for 1 cached prompts"):
        scoring.cached_candidate_logprobs(model, cache, [[[1]], [[2]]])
