"""iLoRA's gated LoRA experts (workflow/llm/ilora.py) on a tiny Llama, fp32."""
from __future__ import annotations

import pytest
import torch

from workflow.llm import ilora, train
from workflow.llm.scoring import candidate_logprobs, concat_candidate_logprobs

SPEC = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def tiny(tiny_model_dir, attention="eager"):
    from workflow.llm.model import load_model

    model, _ = load_model(tiny_model_dir, device="cpu", dtype="float32", attention=attention)
    return model


def randomise(model, seed=1):
    """Non-zero B (a fresh LoRA has B = 0 and would hide every mistake)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_one_expert_with_a_fixed_gate_is_peft_lora(tiny_model_dir):
    """n = 1, g = 1: exactly PEFT's LoRA of the same A and B (scaling alpha / r)."""
    peft_model = train.add_lora(tiny(tiny_model_dir), SPEC, seed=0)
    randomise(peft_model)
    experts = tiny(tiny_model_dir)
    ilora.add_experts(experts, SPEC, n_experts=1, seed=0)
    weights = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    with torch.no_grad():
        for name, p in experts.named_parameters():
            if "lora_" in name:
                module, kind = name.rsplit(".", 1)
                p.copy_(weights[f"base_model.model.{module}.{kind}.default.weight"])
    ids = torch.tensor([[1, 200, 300, 400, 500], [1, 210, 310, 410, 510]])
    peft_model.eval(), experts.eval()
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        with ilora.experts_gate(experts, torch.ones(2, 1)):
            got = experts(input_ids=ids).logits
        base = experts(input_ids=ids).logits  # no gate installed: the base model
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (got - base).abs().max() > 1e-3


def test_mixture_equals_the_sum_of_expert_products():
    """h = W0 x + alpha/(r/n) sum_k g_k B_k A_k x, the experts being rank blocks, per sample."""
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 5)
    layer = ilora.ExpertLoRALinear(base, r=4, n_experts=2, alpha=8.0, dropout=0.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 7, 6)
    gates = torch.softmax(torch.randn(3, 2), dim=-1)
    layer.gate = gates
    got = layer(x)
    A, B = layer.lora_A, layer.lora_B
    for b in range(3):
        expected = base(x[b])
        for k in range(2):
            block = slice(2 * k, 2 * k + 2)
            expected = expected + (8.0 / 2) * gates[b, k] * x[b] @ A[block].T @ B[:, block].T
        torch.testing.assert_close(got[b], expected, atol=1e-5, rtol=1e-5)


def test_the_gate_is_shared_by_every_layer_and_token(tiny_model_dir):
    """Every expert layer sees the same [B, n] tensor for the whole forward; samples differ."""
    model = tiny(tiny_model_dir)
    names = ilora.add_experts(model, SPEC, n_experts=2, seed=0)
    assert len(names) == 2 * model.config.num_hidden_layers
    seen = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append(mod.gate)) for m in ilora.expert_layers(model)]
    gates = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    with torch.no_grad(), ilora.experts_gate(model, gates):
        model(input_ids=torch.tensor([[1, 2, 3], [4, 5, 6]]))
    for h in hooks:
        h.remove()
    assert len(seen) == len(names) and all(g is gates for g in seen)
    assert all(m.gate is None for m in ilora.expert_layers(model))  # cleared after the block
    # swapping the gates of two samples swaps their outputs: the gate is per sample
    randomise(model)
    ids = torch.tensor([[1, 2, 3], [1, 2, 3]])
    with torch.no_grad():
        with ilora.experts_gate(model, gates):
            a = model(input_ids=ids).logits
        with ilora.experts_gate(model, gates.flip(0)):
            b = model(input_ids=ids).logits
    torch.testing.assert_close(a[0], b[1]), torch.testing.assert_close(a[1], b[0])
    assert (a[0] - a[1]).abs().max() > 1e-4


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_scorer_equals_per_candidate_forward_under_gates(tiny_model_dir, attention):
    model = tiny(tiny_model_dir, attention)
    ilora.add_experts(model, SPEC, n_experts=2, seed=0)
    randomise(model)
    model.eval()
    prompts = [[1, 30, 40, 50, 60], [1, 31, 41]]
    answers = [[[70, 71, 2], [72, 2], [73, 74, 75, 2]], [[80, 2], [81, 82, 2], [83, 2]]]
    gates = torch.tensor([[0.7, 0.3], [0.1, 0.9]])
    with torch.no_grad(), ilora.experts_gate(model, gates):
        packed, n = candidate_logprobs(model, prompts, answers)
    # the naive path runs B*C rows: each row gets its sample's gate
    with torch.no_grad(), ilora.experts_gate(model, gates.repeat_interleave(3, dim=0)):
        naive, n2 = concat_candidate_logprobs(model, prompts, answers)
    torch.testing.assert_close(packed, naive, atol=1e-4, rtol=1e-4)
    assert torch.equal(n, n2)


def test_routers_give_one_softmax_gate_per_sample():
    torch.manual_seed(0)
    for kind in ("resnet", "linear"):
        router = ilora.build_router(kind, d=16, n_experts=4).eval()
        g = ilora.gate_weights(router, torch.randn(3, 16), 4, 3)
        assert g.shape == (3, 4)
        torch.testing.assert_close(g.sum(-1), torch.ones(3))
    torch.testing.assert_close(ilora.gate_weights(None, None, 4, 2), torch.full((2, 4), 0.25))
    with pytest.raises(ValueError, match="multiple"):
        ilora.ExpertLoRALinear(torch.nn.Linear(4, 4), r=6, n_experts=4, alpha=1.0, dropout=0.0)


def test_router_shortcut_subsamples_and_zero_pads_without_parameters():
    """The authors' option-A shortcut: x[:, :, ::stride], channels zero-padded half before, half after."""
    shortcut = ilora.ShortcutA(2, 4, stride=2)
    assert list(shortcut.parameters()) == []
    x = torch.arange(1.0, 11.0).reshape(1, 2, 5)  # channel 0: 1..5, channel 1: 6..10
    expected = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 3.0, 5.0], [6.0, 8.0, 10.0], [0.0, 0.0, 0.0]]])
    assert torch.equal(shortcut(x), expected)
    odd = ilora.ShortcutA(1, 4, stride=1)(torch.ones(1, 1, 3))  # 3 new channels: 1 before, 2 after
    assert torch.equal(odd[0, :, 0], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    # in a block: same length as the strided conv body, and no parameter beyond the body's
    block = ilora.ResidualBlock1d(16, 32, stride=2)
    assert isinstance(block.skip, ilora.ShortcutA)
    assert sum(p.numel() for p in block.skip.parameters()) == 0
    assert sum(p.numel() for p in block.parameters()) == sum(p.numel() for p in block.body.parameters())
    for length in (7, 8):
        assert block.eval()(torch.randn(3, 16, length)).shape == (3, 32, (length + 1) // 2)
    assert isinstance(ilora.ResidualBlock1d(16, 16, stride=1).skip, torch.nn.Identity)


def test_resnet_router_has_no_shortcut_convolutions():
    router = ilora.resnet_router(4).eval()
    assert not any(isinstance(m, torch.nn.Conv1d) and m.kernel_size == (1,) for m in router.modules())
    # stem conv + 9 blocks x 2 convs (3-wide), BatchNorms, and Linear(64, 4)
    assert sum(isinstance(m, torch.nn.Conv1d) for m in router.modules()) == 1 + 9 * 2
    assert router(torch.randn(5, 64)).shape == (5, 4)
    assert router(torch.randn(5, 13)).shape == (5, 4)  # any d: the average pool takes the length
