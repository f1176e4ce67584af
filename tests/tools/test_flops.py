"""FLOP counting: torch's counter (with the formulas vita_clip registers) against the closed form."""
import pytest
import torch

from vita_clip import create_model
from vita_clip.tools.flops import count_flops, encoder_flops, encoder_macs, encoder_macs_of, register_flop_formulas

PROMPT_VARIANTS = [
    {},
    {"use_summary_token": False},
    {"use_local_prompts": False, "use_global_prompts": False},
    {"use_summary_token": False, "use_local_prompts": False},
]


def test_registration_is_idempotent_and_covers_the_attention_ops():
    first = register_flop_formulas()
    assert register_flop_formulas() == first
    for op in ("aten::_scaled_dot_product_flash_attention_for_cpu", "vita_clip::prompt_attention",
               "vita_clip::summary_attention", "vita_clip::prompt_attention_backward",
               "vita_clip::summary_attention_backward"):
        assert op in first


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize("frames, batch", [(3, 1), (4, 2), (5, 1)])
def test_counter_matches_formula_on_tiny(fused, frames, batch):
    counted = encoder_flops("vita-clip-tiny", frames, batch, fused=fused)
    analytic = encoder_macs_of("vita-clip-tiny", frames, batch, fused=fused)
    assert counted.flops == 2 * counted.macs
    assert counted.macs == analytic["total"], (counted.by_op, analytic)
    # the attention is counted through the registered formulas, not left out
    expected = "vita_clip.prompt_attention" if fused else "aten._scaled_dot_product_flash_attention_for_cpu"
    assert counted.by_op.get(expected, 0) > 0


@pytest.mark.parametrize("overrides", PROMPT_VARIANTS, ids=lambda o: ",".join(o) or "all-prompts")
@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_counter_matches_formula_without_some_prompts(fused, overrides):
    counted = encoder_flops("vita-clip-tiny", 3, fused=fused, **overrides)
    assert counted.macs == encoder_macs_of("vita-clip-tiny", 3, fused=fused, **overrides)["total"]


def test_plain_clip_and_prompt_free_vita_agree():
    clip = encoder_flops("vifi-clip-tiny", 3)
    assert clip.macs == encoder_macs_of("vita-clip-tiny", 3, clip=True)["total"]
    assert clip.macs == encoder_macs_of("vifi-clip-tiny", 3)["total"]


def test_real_cpu_tensors_count_the_same_as_fake_ones():
    torch.manual_seed(0)
    for fused in (False, True):
        model = create_model("vita-clip-tiny", ["a", "b"], pretrained=None, fused=fused).eval()
        video = torch.randn(1, 3, 3, 32, 32)
        real = count_flops(lambda: model.visual(video))  # noqa: B023
        assert real.macs == encoder_flops("vita-clip-tiny", 3, fused=fused).macs


def test_training_counts_include_the_fused_backward_ops():
    counted = encoder_flops("vita-clip-tiny", 3, fused=True, train=True)
    assert counted.by_op["vita_clip.prompt_attention_backward"] > 0
    assert counted.by_op["vita_clip.summary_attention_backward"] > 0
    eager = encoder_flops("vita-clip-tiny", 3, fused=False, train=True)
    assert counted.macs < eager.macs


def test_vit_b16_8_frames():
    eager = encoder_flops("vita-clip-b16", 8)  # fake tensors: no memory, under a second
    assert round(eager.macs / 1e9, 1) == 149.3
    assert eager.macs == encoder_macs_of("vita-clip-b16", 8)["total"]
    assert encoder_macs_of("vita-clip-b16", 8, fused=True)["total"] == encoder_flops("vita-clip-b16", 8, fused=True).macs


def test_formula_terms_by_hand():
    # eager B/16, 8 frames: 214 attention tokens, 205 FFN tokens per frame and layer
    terms = encoder_macs(768, 12, 12, 4.0, 196, 8, output_dim=512)
    n, n_ffn, d = 214, 205, 768
    per_frame_layer = n * d * 3 * d + 2 * n * n * d + n * d * d + 2 * n_ffn * d * 4 * d
    assert terms["qkv"] + terms["attention"] + terms["out_proj"] + terms["mlp"] == 12 * 8 * per_frame_layer
    assert terms["patch_embed"] == 8 * 196 * 768 * 768
    assert terms["summary_attention"] + terms["cls_proj"] == 12 * (5 * 8 * d * d + 2 * 64 * d)
    with pytest.raises(ValueError):
        encoder_macs(100, 1, 3, 4.0, 4, 2)
