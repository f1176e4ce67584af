"""Backbone weights from tags and local files, and checkpoints that lose nothing."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from vita_clip import CheckpointMismatchError, create_backbone, create_model, list_backbones, load_model, read_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def tiny_clip_state():
    torch.manual_seed(3)
    return open_clip.create_model("ViT-Tiny-16", pretrained=None, force_quick_gelu=True).state_dict()


def assert_same_weights(model, state):
    own = model.state_dict()
    for key, value in state.items():
        assert torch.equal(own[key], value), key


def test_tiny_backbones_are_listed():
    names = list_backbones()
    assert {"ViT-Tiny-16", "ViT-Tiny-8", "ViT-B-16", "ViT-B-32", "ViT-L-14", "ViT-B-16-quickgelu"} <= set(names)
    assert not any(n.startswith(("RN50", "coca_")) for n in names)


@pytest.mark.parametrize("layout", ["open_clip_pt", "ddp_wrapped", "safetensors", "openai_torchscript"])
def test_local_checkpoint_files(tmp_path, tiny_clip_state, layout):
    path = tmp_path / ("clip.safetensors" if layout == "safetensors" else "clip.pt")
    if layout == "open_clip_pt":
        torch.save(tiny_clip_state, path)
    elif layout == "ddp_wrapped":
        torch.save({"state_dict": {"module." + k: v for k, v in tiny_clip_state.items()}, "epoch": 3}, path)
    elif layout == "safetensors":
        save_file({k: v.contiguous() for k, v in tiny_clip_state.items()}, str(path))
    else:  # OpenAI ships TorchScript archives
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = open_clip.create_model("ViT-Tiny-16", pretrained=None, jit=True)
            scripted.load_state_dict(tiny_clip_state, strict=False)  # its attn_mask is derived
            scripted.save(str(path))
    backbone = create_backbone("ViT-Tiny-16", pretrained=str(path))
    assert_same_weights(backbone, tiny_clip_state)


def test_pretrained_file_reaches_the_vita_model(tmp_path, tiny_clip_state, tiny_classes):
    path = tmp_path / "clip.pt"
    torch.save(tiny_clip_state, path)
    model = create_model("vita-clip-tiny", tiny_classes, pretrained=str(path))
    assert torch.equal(model.visual.transformer.resblocks[2].attn.in_proj_weight,
                       tiny_clip_state["visual.transformer.resblocks.2.attn.in_proj_weight"])
    assert torch.equal(model.text.token_embedding.weight, tiny_clip_state["token_embedding.weight"])
    assert torch.equal(model.visual.conv1.bias, torch.zeros(64))


def test_bad_pretrained_values(tmp_path, tiny_clip_state):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        create_backbone("ViT-Tiny-16", pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="not a known|neither an existing file nor a pretrained tag"):
        create_backbone("ViT-B-16", pretrained="not-a-tag")
    bad = dict(tiny_clip_state)
    bad["visual.proj"] = torch.zeros(64, 16)
    torch.save(bad, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointMismatchError, match=r"visual.proj: model expects \(64, 32\), .* has \(64, 16\)"):
        create_backbone("ViT-Tiny-16", pretrained=str(tmp_path / "wrong.pt"))
    torch.save({"note": "no tensors"}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="expected a state dict of tensors"):
        create_backbone("ViT-Tiny-16", pretrained=str(tmp_path / "empty.pt"))


def test_missing_weights_offline_say_how_to_supply_a_file(tmp_path):
    """With an empty cache and no network the error explains the local-file route."""
    script = textwrap.dedent("""
        import vita_clip
        try:
            vita_clip.create_backbone("ViT-B-32", pretrained="openai")
        except vita_clip.PretrainedWeightsUnavailable as err:
            print("ERROR:", err)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert "ERROR:" in out.stdout, out.stderr[-2000:]
    assert "'openai' weights of backbone 'ViT-B-32'" in out.stdout
    assert "pretrained='/path/to/checkpoint'" in out.stdout


def clips(seed=0):
    return torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def perturb_trainable(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)


def test_trainable_only_checkpoint_round_trip(tmp_path, tiny_clip_state, tiny_classes):
    clip_path = tmp_path / "clip.pt"
    torch.save(tiny_clip_state, clip_path)
    model = create_model("vita-clip-tiny", tiny_classes, pretrained=str(clip_path)).eval()
    perturb_trainable(model)
    path = tmp_path / "ckpt" / "model.pt"
    save_checkpoint(model, path, trainable_only=True)  # the default carries a file's backbone inside
    assert sorted(os.listdir(path.parent)) == ["model.pt"]  # no temporary file left behind
    raw = torch.load(path, weights_only=True)
    assert raw["trainable_only"] and set(raw["state_dict"]) == {n for n, p in model.named_parameters() if p.requires_grad}
    restored = load_model(path).eval()
    with torch.no_grad():
        assert torch.equal(restored(clips()), model(clips()))


def test_full_checkpoint_of_a_random_backbone_restores_zero_shot_state(tmp_path, tiny_classes):
    torch.manual_seed(5)
    model = create_model("vita-clip-tiny", tiny_classes).eval()
    perturb_trainable(model)
    model.set_classes(["surfing", "diving"], templates="video")
    path = tmp_path / "model.pt"
    save_checkpoint(model, path)
    assert not torch.load(path, weights_only=True)["trainable_only"]  # random CLIP: cannot be rebuilt from a tag
    restored = load_model(path).eval()
    assert restored.classnames == ["surfing", "diving"] and restored.templates == model.templates
    assert restored.prompt_learner.classnames == tiny_classes
    with torch.no_grad():
        assert torch.equal(restored(clips()), model(clips()))


def test_vifi_checkpoint_round_trip(tmp_path, tiny_classes):
    torch.manual_seed(6)
    model = create_model("vifi-clip-tiny-prompting", tiny_classes).eval()
    perturb_trainable(model)
    save_checkpoint(model, tmp_path / "vifi.pt")
    restored = load_model(tmp_path / "vifi.pt").eval()
    assert isinstance(restored, type(model))
    with torch.no_grad():
        assert torch.equal(restored(clips()), model(clips()))


def test_mismatched_checkpoints_name_the_problem(tmp_path, tiny_classes):
    torch.manual_seed(7)
    model = create_model("vita-clip-tiny", tiny_classes)
    save_checkpoint(model, tmp_path / "five.pt")
    with pytest.raises(CheckpointMismatchError, match=r"prompt_learner.ctx: model expects \(3, 4, 64\).*has \(5, 4, 64\)"):
        create_model("vita-clip-tiny", tiny_classes[:3], checkpoint=tmp_path / "five.pt")
    no_global = create_model("vita-clip-tiny", tiny_classes, use_global_prompts=False)
    with pytest.raises(CheckpointMismatchError, match="visual.global_prompts"):
        from vita_clip.checkpoints.io import load_weights
        load_weights(no_global, read_checkpoint(tmp_path / "five.pt"))
    vifi = tmp_path / "vifi.pt"
    save_checkpoint(create_model("vifi-clip-tiny", tiny_classes), vifi)
    with pytest.raises(ValueError, match="holds a vifi model"):
        create_model("vita-clip-tiny", tiny_classes, checkpoint=vifi)
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="empty.pt: expected a state dict"):
        create_model("vita-clip-tiny", tiny_classes, checkpoint=tmp_path / "empty.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointMismatchError, match="cannot read checkpoint"):
        create_model("vita-clip-tiny", tiny_classes, checkpoint=tmp_path / "garbage.pt")
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_model(tmp_path / "nowhere.pt")
