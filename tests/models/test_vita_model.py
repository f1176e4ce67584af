"""VitaCLIP behaviour beyond the golden file: counts, freezing, zero-shot, frame counts, errors."""
from __future__ import annotations

import open_clip
import pytest
import torch

from vita_clip import VitaCLIP, count_parameters, create_model

K400_LIKE = [f"action {i}" for i in range(400)]


def tiny(classes, **overrides) -> VitaCLIP:
    torch.manual_seed(0)
    return create_model("vita-clip-tiny", classes, **overrides)


def clips(b=2, t=4, size=32, seed=1):
    return torch.randn(b, t, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- parameter counts (SPEC §1.5), on the meta device ---------------------------------------
def test_released_b16_parameter_counts_on_meta():
    model = create_model("vita-clip-b16", K400_LIKE, device="meta", train_cls_proj=False)
    assert next(model.parameters()).is_meta
    counts = count_parameters(model)
    assert counts["trainable"] == 30_158_849
    assert counts["total"] == 186_867_457


def test_fixed_b16_parameter_count_with_16_context_tokens():
    model = create_model("vita-clip-b16", K400_LIKE, device="meta", text={"n_ctx": 16})
    assert count_parameters(model)["trainable"] == 38_884_353


# -- frozen means frozen ---------------------------------------------------------------------
@pytest.mark.parametrize("train_cls_proj", [True, False])
def test_one_step_changes_every_trainable_tensor_and_nothing_else(tiny_classes, train_cls_proj):
    model = tiny(tiny_classes, train_cls_proj=train_cls_proj).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".cls_proj." in n for n in trainable) == train_cls_proj
    assert not any(n.startswith(("visual.transformer.", "visual.conv1", "text.")) for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.05)
    loss = torch.nn.functional.cross_entropy(model(clips()), torch.tensor([0, 3]))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == trainable


# -- zero-shot and the text-feature cache ----------------------------------------------------
def test_zero_shot_on_new_class_names(tiny_classes):
    model = tiny(tiny_classes).eval()
    new = ["surfing crowd", "juggling balls", "making_tea"]
    model.set_classes(new, templates="video")
    assert model.classnames == new
    with torch.no_grad():
        logits = model(clips())
        expected = model.text.encode_templates(new, model.templates)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert torch.allclose(model.class_text_features(), expected)
    # custom templates and a single-string template work too
    model.set_classes(new, templates=["a clip of {} outdoors", "{}"])
    assert model(clips()).shape == (2, 3)


def test_class_specific_context_refuses_new_classes_without_templates(tiny_classes):
    model = tiny(tiny_classes)
    with pytest.raises(ValueError, match="templates="):
        model.set_classes(["surfing", "juggling"])


def test_generic_context_transfers_to_new_classes(tiny_classes):
    model = tiny(tiny_classes, text={"class_specific": False}).eval()
    model.set_classes(["surfing", "juggling"])
    assert model.templates is None
    assert model(clips()).shape == (2, 2)


def test_eval_caches_text_features_until_classes_or_prompts_change(tiny_classes, monkeypatch):
    model = tiny(tiny_classes).eval()
    calls = []
    original = model.text.forward
    monkeypatch.setattr(model.text, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    video = clips()
    with torch.no_grad():
        first = model(video)
        second = model(video)
    assert len(calls) == 1 and torch.equal(first, second)
    with torch.no_grad():
        model.prompt_learner.ctx.add_(torch.randn_like(model.prompt_learner.ctx))  # like an optimizer step
    with torch.no_grad():
        third = model(video)
    assert len(calls) == 2 and not torch.allclose(first, third)
    model.set_classes(tiny_classes[:3], templates="class_only")
    with torch.no_grad():
        model(video)
        model(video)
    assert len(calls) == 3
    model.train()
    model(video)
    model(video)
    assert len(calls) == 5  # training recomputes every call (the prompts change every step)


# -- frame counts ----------------------------------------------------------------------------
@pytest.mark.parametrize("frames", [1, 3, 4, 8])
def test_other_frame_counts_never_mix_videos(tiny_classes, frames):
    model = tiny(tiny_classes).eval()
    video = clips(b=3, t=frames)
    with torch.no_grad():
        together = model(video)
        alone = model(video[1:2])
        changed = video.clone()
        changed[0] = torch.randn_like(changed[0])
        changed[2] = torch.randn_like(changed[2])
        neighbours_changed = model(changed)
    assert torch.allclose(together[1:2], alone, atol=1e-5, rtol=1e-5)
    assert torch.allclose(neighbours_changed[1], together[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(neighbours_changed[0], together[0], atol=1e-4)


def test_frame_order_matters(tiny_classes):
    """The time embedding, local prompts and summary tokens make the model see order."""
    model = tiny(tiny_classes).eval()
    video = clips(b=1)
    with torch.no_grad():
        forward, backward = model(video), model(video.flip(1))
    assert not torch.allclose(forward, backward, atol=1e-4)


# -- prompt switches -------------------------------------------------------------------------
def test_all_prompts_off_is_frozen_clip_mean_pooled(tiny_classes):
    """With no prompts and a zero time embedding the video tower is plain CLIP, averaged."""
    torch.manual_seed(0)
    backbone = open_clip.create_model("ViT-Tiny-16", pretrained=None)
    model = VitaCLIP(classnames=tiny_classes, clip_model=backbone, backbone="ViT-Tiny-16", pretrained=None,
                     num_frames=4, use_summary_token=False, use_local_prompts=False, use_global_prompts=False).eval()
    assert model.visual.prompt_layers is None and model.visual.global_prompts is None
    with torch.no_grad():
        model.visual.time_embed.zero_()
        video = clips()
        ours = model.encode_video(video)
        reference = backbone.encode_image(video.flatten(0, 1)).view(2, 4, -1).mean(1)
    assert torch.allclose(ours, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("switch", ["use_summary_token", "use_local_prompts", "use_global_prompts"])
def test_each_prompt_type_can_be_switched_off(tiny_classes, switch):
    model = tiny(tiny_classes, **{switch: False})
    names = [n for n, _ in model.named_parameters()]
    marker = {"use_summary_token": ".summary_", "use_local_prompts": ".local_prompts",
              "use_global_prompts": "global_prompts"}[switch]
    assert not any(marker in n for n in names)
    assert model(clips()).shape == (2, 5)


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, message", [
    ((4, 3, 32, 32), "add a batch dimension"),
    ((2, 3, 4, 32, 32), "channels before time"),
    ((2, 4, 1, 32, 32), "3 channels"),
    ((2, 4, 3, 64, 64), "must be 32x32"),
    ((0, 4, 3, 32, 32), "empty"),
])
def test_bad_video_shapes_are_named(tiny_classes, shape, message):
    model = tiny(tiny_classes)
    with pytest.raises(ValueError, match=message):
        model(torch.zeros(shape))


def test_integer_video_is_rejected(tiny_classes):
    with pytest.raises(TypeError, match="float"):
        tiny(tiny_classes)(torch.zeros(1, 4, 3, 32, 32, dtype=torch.uint8))


def test_bad_names_and_configs(tiny_classes):
    with pytest.raises(ValueError, match="class list is empty"):
        tiny([])
    with pytest.raises(TypeError, match="list of strings"):
        tiny("abseiling")
    with pytest.raises(ValueError, match="unknown backbone 'ViT-Nope'"):
        create_model("vita-clip", tiny_classes, backbone="ViT-Nope", pretrained=None)
    with pytest.raises(ValueError, match="unknown model 'vita-clip-b99'"):
        create_model("vita-clip-b99", tiny_classes)
    with pytest.raises(ValueError, match="unknown config key 'num_frame'"):
        create_model("vita-clip-tiny", tiny_classes, num_frame=8)
    with pytest.raises(ValueError, match="text.position"):
        create_model("vita-clip-tiny", tiny_classes, text={"position": "back"})
    with pytest.raises(ValueError, match="unknown template set"):
        tiny(tiny_classes).set_classes(["a"], templates="nonsense")
