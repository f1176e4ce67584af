"""``fused=True``: the same model (parameters, state-dict keys, outputs, gradients) computed
without building the prompt sequence."""
from __future__ import annotations

import pytest
import torch

from helpers import build_golden_model, golden_video, rel_err
from vita_clip import create_model


def test_fused_reproduces_the_golden_logits(golden):
    eager = build_golden_model(golden)
    fused = create_model("vita-clip", golden["classes"], backbone="ViT-Tiny-16", pretrained=None, fused=True,
                         **{k: v for k, v in eager.config.__dict__.items() if k not in ("backbone", "pretrained", "fused", "text")},
                         text=eager.config.text.__dict__).eval()
    assert list(fused.state_dict()) == list(eager.state_dict())
    fused.load_state_dict(eager.state_dict())
    with torch.no_grad():
        logits = fused(golden_video(golden))
    assert rel_err(logits, golden["logits"]) <= 1e-5


def grads_of(model, video, labels, run=None):
    """Gradients of ``model``'s trainable tensors; ``run`` (e.g. a compiled model) does the forward."""
    model.zero_grad()
    torch.nn.functional.cross_entropy((model if run is None else run)(video), labels).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("overrides, frames", [
    ({}, 4),
    ({}, 3),  # another clip length: interpolated time embedding and local prompts
    ({"use_summary_token": False}, 4),
    ({"use_local_prompts": False, "use_global_prompts": False}, 4),
    ({"use_summary_token": False, "use_local_prompts": False}, 4),
])
def test_fused_gradients_match_eager(tiny_classes, overrides, frames):
    torch.manual_seed(0)
    eager = create_model("vita-clip-tiny", tiny_classes, **overrides).train()
    fused = create_model("vita-clip-tiny", tiny_classes, fused=True, **overrides).train()
    fused.load_state_dict(eager.state_dict())
    video = torch.randn(3, frames, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 4])
    expected, actual = grads_of(eager, video, labels), grads_of(fused, video, labels)
    assert expected.keys() == actual.keys()
    scale = max(g.norm().item() for g in expected.values())
    for name, g in expected.items():
        # k-projection biases of the summary attention have an exactly-zero gradient
        assert (actual[name] - g).norm().item() <= 1e-4 * max(g.norm().item(), 1e-3 * scale), name


def test_compiled_fused_model_matches(tiny_classes):
    torch.manual_seed(0)
    fused = create_model("vita-clip-tiny", tiny_classes, fused=True).eval()
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        text = fused.encode_text()
        expected = fused(video, text)
        compiled = torch.compile(fused, fullgraph=True, backend="inductor")
        actual = compiled(video, text)
    assert torch.allclose(actual, expected, atol=1e-5, rtol=1e-5)


def test_compiled_fused_training_step_matches_eager_gradients(tiny_classes):
    """fullgraph compile traces the custom ops' fake and backward registrations."""
    torch.manual_seed(0)
    fused = create_model("vita-clip-tiny", tiny_classes, fused=True).train()
    video = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([1, 3])
    expected = grads_of(fused, video, labels)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    actual = grads_of(fused, video, labels, run=compiled)
    for name, g in expected.items():
        assert torch.allclose(actual[name], g, rtol=1e-4, atol=1e-7), name


def test_lean_quick_gelu_matches_autograd_and_saves_only_its_input():
    from open_clip.transformer import QuickGELU

    from vita_clip.models.activations import LeanQuickGELU

    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(LeanQuickGELU.apply, (x,))
    y = torch.randn(4, 9, requires_grad=True)
    grad = torch.randn(4, 9)
    (expected,) = torch.autograd.grad(QuickGELU()(y), y, grad)
    (got,) = torch.autograd.grad(LeanQuickGELU.apply(y), y, grad)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)

    def saved_bytes(fn):
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(torch.randn(64, 256, requires_grad=True))
        return sum(storages.values())

    assert saved_bytes(LeanQuickGELU.apply) * 2 == saved_bytes(QuickGELU())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_quick_gelu_by_blocks_gives_the_whole_tensor_ops_bit_for_bit(dtype):
    """On a CPU the forward and backward run over blocks of rows (small temporaries): the
    values of the same ops on the whole tensor, exactly, over several blocks and a partial last
    one, in float32 and in bf16 (where every op's rounding shows)."""
    from vita_clip.models.activations import GELU_BLOCK_ROWS, LeanQuickGELU

    x = (torch.randn(3, 197, 40) * 3).to(dtype).requires_grad_()
    assert 3 * 197 > 2 * GELU_BLOCK_ROWS and (3 * 197) % GELU_BLOCK_ROWS
    grad = torch.randn(3, 197, 40).to(dtype)
    out = LeanQuickGELU.apply(x)
    (got,) = torch.autograd.grad(out, x, grad)
    with torch.no_grad():
        s = torch.sigmoid(1.702 * x)
        assert torch.equal(out, x * s)
        assert torch.equal(got, grad * (s + 1.702 * x * s * (1 - s)))
    (strided,) = torch.autograd.grad(LeanQuickGELU.apply(x), x, grad.transpose(0, 1).contiguous().transpose(0, 1))
    assert torch.equal(strided, got)  # a non-contiguous gradient: the whole-tensor ops


def test_frozen_mlp_equals_the_open_clip_mlp_with_and_without_autograd():
    from vita_clip.models.activations import GELU_BLOCK_ROWS, frozen_mlp
    from vita_clip.models.backbone import create_backbone

    block = create_backbone("ViT-Tiny-16", None).visual.transformer.resblocks[0]
    x = torch.randn(3, 197, block.mlp.c_fc.in_features)  # rows over several blocks, the last one partial
    assert x.shape[:2].numel() > 2 * GELU_BLOCK_ROWS and x.shape[:2].numel() % GELU_BLOCK_ROWS
    with torch.no_grad():
        expected = block.mlp(x)
        torch.testing.assert_close(frozen_mlp(block.mlp, x), expected)  # in place, no autograd
    with torch.inference_mode():
        torch.testing.assert_close(frozen_mlp(block.mlp, x), expected)
    xg = x.clone().requires_grad_()
    torch.testing.assert_close(frozen_mlp(block.mlp, xg), expected)  # through LeanQuickGELU
