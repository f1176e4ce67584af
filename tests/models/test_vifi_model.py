"""ViFiCLIP: equal to frame-wise open_clip, fine-tune modes, bridge-and-prompt, original checkpoints."""
from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from vita_clip import ViFiCLIP, create_model
from vita_clip.checkpoints.io import atomic_save


def clips(b=2, t=3, seed=1):
    return torch.randn(b, t, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def tiny_clip():
    torch.manual_seed(0)
    return open_clip.create_model("ViT-Tiny-16", pretrained=None, force_quick_gelu=True)


def test_equals_framewise_open_clip_with_a_photo_of_prompts(tiny_clip, tiny_classes):
    model = ViFiCLIP(classnames=tiny_classes, clip_model=tiny_clip, backbone="ViT-Tiny-16", pretrained=None).eval()
    video = clips()
    tokenizer = open_clip.get_tokenizer("ViT-Tiny-16")
    with torch.no_grad():
        logits = model(video)
        image = tiny_clip.encode_image(video.flatten(0, 1)).view(2, 3, -1).mean(1)
        names = [c.replace("_", " ") for c in tiny_classes]
        text = tiny_clip.encode_text(tokenizer([f"a photo of a {c}." for c in names]))
        reference = tiny_clip.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    assert torch.allclose(logits, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode, trains", [
    ("both", lambda n: n != "text.token_embedding.weight"),
    ("image", lambda n: n.startswith("visual.")),
    ("text", lambda n: n.startswith("text.") and n != "text.token_embedding.weight"),
    ("none", lambda n: False),
])
def test_finetune_modes(tiny_classes, mode, trains):
    model = create_model("vifi-clip-tiny", tiny_classes, finetune=mode)
    for name, param in model.named_parameters():
        assert param.requires_grad == trains(name), name


def test_one_step_of_full_finetuning_changes_every_trainable_tensor(tiny_classes):
    torch.manual_seed(0)
    model = create_model("vifi-clip-tiny", tiny_classes).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    F.cross_entropy(model(clips()), torch.tensor([1, 4])).backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {n for n, p in model.named_parameters() if p.requires_grad}
    assert "text.token_embedding.weight" not in changed


def test_bridge_and_prompt_trains_only_prompts_and_uses_them(tiny_classes):
    torch.manual_seed(0)
    model = create_model("vifi-clip-tiny-prompting", tiny_classes).eval()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"vision_prompts", "text_prompts", "prompt_learner.ctx"}
    assert model.vision_prompts.shape == (2, 2, 64) and model.text_prompts.shape == (1, 4, 64)
    assert model.prompt_learner.n_ctx == 4
    video = clips()
    with torch.no_grad():
        base = model(video)
        for prompts in (model.vision_prompts[1], model.text_prompts[0]):
            saved = prompts.clone()
            prompts.add_(torch.randn_like(prompts))
            assert not torch.allclose(model(video), base, atol=1e-5), "a deep prompt had no effect"
            prompts.copy_(saved)
        # learned generic context transfers to unseen classes
        model.set_classes(["surfing", "juggling"])
        assert model(video).shape == (2, 2)


def test_prompt_config_errors(tiny_classes):
    with pytest.raises(ValueError, match="finetune='none'"):
        create_model("vifi-clip-tiny", tiny_classes, text_prompts=4, text_prompt_depth=1)
    with pytest.raises(ValueError, match="exceed the backbone's layers"):
        create_model("vifi-clip-tiny-prompting", tiny_classes, vision_prompt_depth=9)
    with pytest.raises(ValueError, match="must both be 0 or both positive"):
        create_model("vifi-clip-tiny", tiny_classes, finetune="none", text_prompts=4)


def original_layout(model: ViFiCLIP) -> dict:
    """The state dict the original ViFi-CLIP code would save for ``model`` (its key names)."""
    out = {"module.logit_scale": model.logit_scale.detach().clone(),
           "module.prompt_learner.ctx": model.prompt_learner.ctx.detach().clone(),
           "module.prompt_learner.token_prefix": torch.zeros(5, 1, 64)}  # derived buffer: must be dropped
    for key, value in model.state_dict().items():
        if key.startswith("visual."):
            out["module.image_encoder." + key[len("visual."):]] = value.clone()
        elif key.startswith("text.") and key != "text.token_embedding.weight":
            out["module.text_encoder." + key[len("text."):]] = value.clone()
    out["module.image_encoder.VPT"] = model.vision_prompts[0].detach().clone()
    for i in range(1, model.vision_prompts.shape[0]):
        out[f"module.image_encoder.transformer.resblocks.{i}.VPT_shallow"] = model.vision_prompts[i].detach().clone()
    for i in range(1, model.text_prompts.shape[0] + 1):
        out[f"module.text_encoder.transformer.resblocks.{i}.VPT_shallow"] = model.text_prompts[i - 1].detach().clone()
    return out


def test_original_vifi_checkpoint_loads(tiny_classes, tiny_clip, tmp_path):
    """Original checkpoints hold no token embedding: it comes from the base CLIP weights.
    Loaded, they round their prompts to float16 as the original does (``fp16_prompts``)."""
    base = tmp_path / "clip_tiny.pt"
    torch.save(tiny_clip.state_dict(), base)
    torch.manual_seed(1)
    trained = create_model("vifi-clip-tiny-prompting", tiny_classes, pretrained=str(base), fp16_prompts=True).eval()
    with torch.no_grad():
        trained.vision_prompts.normal_()
        trained.text_prompts.normal_()
        trained.visual.proj.mul_(1.5)  # fine-tuned tower weights must come from the checkpoint
    path = tmp_path / "vifi_original.pth"
    atomic_save({"model": original_layout(trained), "epoch": 10}, path)
    torch.manual_seed(2)
    loaded = create_model("vifi-clip-tiny-prompting", tiny_classes, pretrained=str(base), checkpoint=path).eval()
    video = clips()
    assert loaded.config.fp16_prompts and loaded.config.keep_underscores
    with torch.no_grad():
        assert torch.allclose(loaded(video), trained(video), atol=1e-6)
