"""Checkpoints that rebuild the same function anywhere: the activation rule for original
checkpoints, the backbone config and data recipe carried inside, copies loaded from elsewhere,
non-standard backbones, the shareable folder form and checksums."""
from __future__ import annotations

import json
import shutil
import stat

import numpy as np
import open_clip
import pytest
import torch

from helpers import golden_video, rel_err
from vita_clip import CheckpointMismatchError, create_model, from_pretrained, load_model, save_checkpoint, save_pretrained
from vita_clip.checkpoints.io import atomic_save
from vita_clip.data.config import DataConfig
from vita_clip.data.sampling import sample_frame_indices
from vita_clip.inference import model_data_config

TOL = 1e-5
TINY16 = open_clip.get_model_config("ViT-Tiny-16")


def write_backbone_json(path, quick_gelu: bool | None = None, **vision) -> str:
    """The tiny golden backbone as a user's open_clip JSON file (optionally without ``quick_gelu``)."""
    cfg = json.loads(json.dumps(TINY16))
    cfg.pop("quick_gelu")
    if quick_gelu is not None:
        cfg["quick_gelu"] = quick_gelu
    cfg["vision_cfg"].update(vision)
    path.write_text(json.dumps(cfg))
    return str(path)


def activations(model) -> set[str]:
    return {type(m).__name__ for m in model.modules() if type(m).__name__ in ("QuickGELU", "GELU")}


def clips(seed=0, frames=4):
    return torch.randn(2, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def perturb_trainable(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def test_original_vita_checkpoint_of_a_standard_config_loads_with_quick_gelu(golden, tmp_path):
    """A backbone config without ``quick_gelu`` (as ViT-B-16 and ViT-L-14 ship) and no
    pretrained tag: the released code's QuickGELU still, and the golden logits."""
    backbone = write_backbone_json(tmp_path / "ViT-Tiny-16-plain.json")
    path = tmp_path / "released.pth"
    atomic_save({"model": {"module." + k: v for k, v in golden["state_dict"].items()}}, path)
    model = create_model("vita-clip", golden["classes"], backbone=backbone, checkpoint=path,
                         train_cls_proj=False).eval()
    assert activations(model) == {"QuickGELU"} and model.config.quick_gelu is True
    with torch.no_grad():
        assert rel_err(model(golden_video(golden)), golden["logits"]) <= TOL
    with pytest.raises(ValueError, match="quick_gelu=True"):
        create_model("vita-clip", golden["classes"], backbone=backbone, checkpoint=path, quick_gelu=False)


def test_original_vifi_checkpoint_loads_with_quick_gelu(tmp_path, tiny_classes):
    backbone = write_backbone_json(tmp_path / "plain.json")
    torch.manual_seed(1)
    source = create_model("vifi-clip", tiny_classes, backbone=backbone, pretrained=None, num_frames=4).eval()
    assert activations(source) == {"GELU"}  # the config alone would build GELU
    released = {}
    for key, value in source.state_dict().items():
        if key.startswith("visual."):
            released["image_encoder." + key[len("visual."):]] = value
        elif key.startswith("text.") and key != "text.token_embedding.weight":  # ViFi-CLIP keeps no token embedding
            released["text_encoder." + key[len("text."):]] = value
        elif key == "logit_scale":
            released[key] = value
    path = tmp_path / "vifi_released.pth"
    torch.save({"model": released}, path)
    model = create_model("vifi-clip", tiny_classes, backbone=backbone, checkpoint=path, pretrained=None,
                         num_frames=4).eval()
    assert activations(model) == {"QuickGELU"}


def trained_tiny(tmp_path, tiny_classes, stride=4):
    """A tiny Vita-CLIP whose frozen weights come from a local file, with a run's data recipe."""
    torch.manual_seed(2)
    clip_path = tmp_path / "weights" / "clip.pt"
    clip_path.parent.mkdir()
    torch.save(open_clip.create_model("ViT-Tiny-16", force_quick_gelu=True).state_dict(), clip_path)
    model = create_model("vita-clip-tiny", tiny_classes, pretrained=str(clip_path)).eval()
    perturb_trainable(model)
    recipe = DataConfig.vita_clip(num_frames=4, stride=stride, num_clips=2, size=32)
    model.data_config = recipe
    return model, clip_path


def test_checkpoint_copied_elsewhere_gives_the_same_logits_and_frames(tmp_path, tiny_classes, monkeypatch):
    model, clip_path = trained_tiny(tmp_path, tiny_classes, stride=4)
    run = tmp_path / "run"
    save_checkpoint(model, run / "model.pt")
    (run / "config.yaml").write_text("data: {sampling: {stride: 16}}\n")  # a side file: must not matter
    copy = tmp_path / "elsewhere" / "model.pt"
    copy.parent.mkdir()
    shutil.copy(run / "model.pt", copy)
    shutil.rmtree(run)
    clip_path.unlink()  # the backbone file is gone too: the checkpoint carries it
    third = tmp_path / "third"
    third.mkdir()
    monkeypatch.chdir(third)
    restored = load_model(copy).eval()
    with torch.no_grad():
        assert torch.equal(restored(clips()), model(clips()))
    recipe = model_data_config(restored, copy)
    assert recipe == model.data_config and recipe.sampling.stride == 4
    for train in (False, True):
        expected = sample_frame_indices(200, model.data_config.sampling, train, np.random.default_rng(0))
        assert (sample_frame_indices(200, recipe.sampling, train, np.random.default_rng(0)) == expected).all()
    # frames override the clip length, views the test views; the rest stays the checkpoint's
    overridden = model_data_config(restored, copy, frames=8, views=(1, 3))
    assert overridden.sampling.stride == 4 and overridden.sampling.num_frames == 8
    assert overridden.transform.num_crops == 3


def test_full_checkpoint_records_the_activation_it_computed(tmp_path, tiny_classes):
    """GELU-default config, QuickGELU asked for: the checkpoint rebuilds QuickGELU from a third directory."""
    backbone = write_backbone_json(tmp_path / "plain.json")
    torch.manual_seed(3)
    model = create_model("vita-clip", tiny_classes, backbone=backbone, pretrained=None, quick_gelu=True,
                         num_frames=4, num_global_prompts=3, text={"n_ctx": 4}).eval()
    save_checkpoint(model, tmp_path / "model.pt")
    raw = torch.load(tmp_path / "model.pt", weights_only=True)
    assert raw["config"]["quick_gelu"] is True and raw["backbone_config"]["quick_gelu"] is True
    restored = load_model(tmp_path / "model.pt").eval()
    assert activations(restored) == {"QuickGELU"}
    with torch.no_grad():
        assert torch.equal(restored(clips()), model(clips()))


def test_non_standard_backbone_round_trips_without_registration(tmp_path, tiny_classes):
    """A ViT open_clip does not ship (width 48, 2 heads of 24): built from its JSON, reloaded
    from the checkpoint alone after the JSON is gone."""
    cfg = {"embed_dim": 24, "quick_gelu": True,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 24, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    path = tmp_path / "my-vit.json"
    path.write_text(json.dumps(cfg))
    assert "my-vit" not in open_clip.list_models()
    torch.manual_seed(4)
    model = create_model("vita-clip", tiny_classes, backbone=str(path), pretrained=None, num_frames=4,
                         num_global_prompts=2, text={"n_ctx": 2}).eval()
    assert model.visual.transformer.resblocks[0].attn.num_heads == 2
    save_checkpoint(model, tmp_path / "model.pt")
    path.unlink()
    restored = load_model(tmp_path / "model.pt").eval()
    assert restored.visual.transformer.resblocks[0].attn.num_heads == 2
    with torch.no_grad():
        assert torch.equal(restored(clips()), model(clips()))


@pytest.mark.parametrize("section,key", [("vision_cfg", "head_width"), ("text_cfg", "heads")])
def test_backbone_json_must_state_the_heads(tmp_path, tiny_classes, section, key):
    cfg = json.loads(json.dumps(TINY16))
    del cfg[section][key]
    path = tmp_path / "no-heads.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"{section}.{key} is missing"):
        create_model("vita-clip", tiny_classes, backbone=str(path), pretrained=None)


def test_save_pretrained_folder_round_trip(tmp_path, tiny_classes):
    model, _ = trained_tiny(tmp_path, tiny_classes)
    folder = save_pretrained(model, tmp_path / "shared")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    for p in folder.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044, p  # readable by the group and others
    description = json.loads((folder / "config.json").read_text())
    assert description["backbone_config"]["vision_cfg"]["head_width"] == 16 and description["data"]["sampling"]["stride"] == 4
    restored = from_pretrained(str(folder)).eval()
    with torch.no_grad():
        assert torch.equal(restored(clips()), model(clips()))
    assert restored.data_config == model.data_config
    save_checkpoint(model, tmp_path / "model.pt")
    assert stat.S_IMODE((tmp_path / "model.pt").stat().st_mode) & 0o044 == 0o044  # not 0600


def test_corrupt_weights_are_detected_by_checksum(tmp_path, tiny_classes):
    model, _ = trained_tiny(tmp_path, tiny_classes)
    folder = save_pretrained(model, tmp_path / "shared")
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF  # one flipped byte in the last tensor: the file still parses
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointMismatchError, match="checksum"):
        load_model(folder)
    save_checkpoint(model, tmp_path / "model.pt")
    raw = torch.load(tmp_path / "model.pt", weights_only=True)
    key = next(iter(raw["state_dict"]))
    raw["state_dict"][key] = raw["state_dict"][key] + 1e-3  # what a flipped bit does to a value
    torch.save(raw, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointMismatchError, match="checksum"):
        load_model(tmp_path / "tampered.pt")


def test_hub_repo_id_that_cannot_be_fetched_says_so(tmp_path, tiny_classes, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="Hugging Face Hub"):
        load_model("someone/no-such-vita-clip-model")


def test_checkpoints_written_before_the_rule_take_the_activation_from_their_tag():
    """Old checkpoints recorded ``quick_gelu: null`` and the tag; the tag decided it then."""
    from vita_clip.models.backbone import tag_quick_gelu

    assert tag_quick_gelu("ViT-B-16", "openai") is True
    assert tag_quick_gelu("ViT-B-16", "laion2b_s34b_b88k") is False
    assert tag_quick_gelu("ViT-B-16", "no-such-tag") is None
