"""The eager models reproduce the original Vita-CLIP code (golden outputs, float32, CPU)."""
from __future__ import annotations

import pytest
import torch

from helpers import build_golden_model, golden_video, rel_err
from vita_clip import VitaCLIP, create_model
from vita_clip.checkpoints.io import atomic_save
from vita_clip.models.vita_vision import strip_prompt_tokens

TOL = 1e-5


def test_tokenized_prompts_match(golden):
    model = build_golden_model(golden)
    assert torch.equal(model.prompt_learner.tokenized_prompts, golden["tokenized_prompts"].long())


def test_logits_match(golden):
    model = build_golden_model(golden)
    with torch.no_grad():
        logits = model(golden_video(golden))
    assert logits.shape == golden["logits"].shape
    assert rel_err(logits, golden["logits"]) <= TOL


def capture_intermediates(model: VitaCLIP, video: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the model with forward hooks that record what the golden file names."""
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name, pick=lambda args, out: out):
        def hook(module, args, out):
            seen[name] = pick(args, out).detach().clone()
        return hook

    visual = model.visual
    handles.append(visual.conv1.register_forward_hook(keep("visual.patch_embed.out", lambda a, o: o.flatten(2).transpose(1, 2))))
    handles.append(visual.ln_pre.register_forward_hook(keep("visual.ln_pre.out")))
    for i, block in enumerate(visual.transformer.resblocks):
        p = f"visual.blocks.{i}"
        handles.append(block.ln_1.register_forward_hook(keep(f"{p}.attn_tokens", lambda a, o: a[0])))
        handles.append(block.attn.register_forward_hook(keep(f"{p}.attn.out", lambda a, o: o[0])))
        handles.append(block.ln_2.register_forward_hook(keep(f"{p}.ffn_in", lambda a, o: a[0])))
        handles.append(block.ls_2.register_forward_hook(keep(f"{p}.ffn_out")))
        layer = visual.prompt_layers[i]
        handles.append(layer.cls_proj.register_forward_hook(keep(f"{p}.cls_proj.out")))
        handles.append(layer.summary_attn.register_forward_hook(keep(f"{p}.summary_attn.out")))
    for i, block in enumerate(model.text.transformer.resblocks):
        handles.append(block.register_forward_hook(keep(f"textual.transformer.resblocks.{i}.out", lambda a, o: o.transpose(0, 1))))
    handles.append(model.prompt_learner.register_forward_hook(keep("text.prompts")))
    try:
        with torch.no_grad():
            seen["video_features"] = model.encode_video(video)
            seen["text_features"] = model.encode_text()
    finally:
        for h in handles:
            h.remove()
    t = model.num_frames
    for i in range(len(visual.transformer.resblocks)):
        p = f"visual.blocks.{i}"
        seen[f"{p}.in"] = strip_prompt_tokens(seen[f"{p}.attn_tokens"], num_local=t, has_summary=True)
        seen[f"{p}.out"] = seen.pop(f"{p}.ffn_in") + seen.pop(f"{p}.ffn_out")
    return seen


def test_every_intermediate_matches(golden):
    model = build_golden_model(golden)
    seen = capture_intermediates(model, golden_video(golden))
    expected = golden["intermediates"]
    assert set(expected) <= set(seen)
    eot_prefix = int(model.prompt_learner.tokenized_prompts.argmax(-1).max()) + 1
    for name, value in expected.items():
        if name.startswith("textual.transformer."):
            # the causal text tower runs on the prefix holding every end-of-text token
            # (TextEncoder.sequence_length): its positions must equal the original's
            assert seen[name].shape[0] == eot_prefix < value.shape[0], name
            value = value[:eot_prefix]
        assert seen[name].shape == value.shape, name
        assert rel_err(seen[name], value) <= TOL, name


VARIANTS = ["no_vision_prompts", "summary_only", "local_only", "global_only",
            "text_generic_init_a_photo_of_a", "text_generic_random_middle", "text_csc_front"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_matches(golden, variant):
    expected = golden["variants"][variant]
    model = build_golden_model(golden, variant)
    assert torch.equal(model.prompt_learner.tokenized_prompts, expected["tokenized_prompts"].long())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == len(expected["trainable_parameters"])  # released behaviour: cls_proj frozen
    with torch.no_grad():
        video_features = model.encode_video(golden_video(golden))
        text_features = model.encode_text()
        logits = model.logits(video_features, text_features)
    assert rel_err(video_features, expected["video_features"]) <= TOL
    assert rel_err(text_features, expected["text_features"]) <= TOL
    assert rel_err(logits, expected["logits"]) <= TOL


def test_zero_shot_class_only_matches(golden):
    """The released zero-shot constructor crashes; ours builds bare-class-name features from
    the frozen text tower, as the golden variant's precomputed features were made."""
    expected = golden["variants"]["zeroshot_class_only"]
    model = build_golden_model(golden)
    model.set_classes(golden["classes"], templates="class_only")
    with torch.no_grad():
        logits = model(golden_video(golden))
        text_features = model.class_text_features()
    assert rel_err(logits, expected["logits"]) <= TOL
    normalized = expected["text_features"] / expected["text_features"].norm(dim=-1, keepdim=True)
    assert rel_err(text_features, normalized) <= TOL


def test_original_training_checkpoint_through_create_model(golden, tmp_path):
    """A DDP training checkpoint of the original code ({'model': {'module.' + key}}) loads
    through the factory, which also reads frames, prompts and text context from it."""
    ckpt = {"model": {"module." + k: v for k, v in golden["state_dict"].items()}, "next_step": 5000}
    path = tmp_path / "vita_clip_original.pth"
    atomic_save(ckpt, path)
    model = create_model("vita-clip", golden["classes"], backbone="ViT-Tiny-16", checkpoint=path,
                         train_cls_proj=False).eval()
    assert model.config.num_frames == 4 and model.config.num_global_prompts == 3
    assert model.config.text.n_ctx == 4 and model.config.text.class_specific
    with torch.no_grad():
        logits = model(golden_video(golden))
    assert rel_err(logits, golden["logits"]) <= TOL
