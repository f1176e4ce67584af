"""The demo's tiny CLIP pretrained on rendered frames: captions, targets, training, caching, wiring."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vita_clip.demo import backbone as db
from vita_clip.demo.dataset import Shape, draw_shape, random_frame
from vita_clip.models.backbone import create_backbone


def shape(**kw) -> Shape:
    values = dict(kind="triangle", x=20.0, y=80.0, radius=8.0, angle=-math.pi / 2, alpha=1.0,
                  color=np.array([225.0, 25.0, 35.0]))
    values.update(kw)
    return Shape(**values)


def test_captions_describe_the_shape_as_cropped():
    full = (0, 0, 96)
    assert db.caption(shape(), full) == "a small red triangle pointing up at the bottom left"
    # the same shape seen through a crop around it is centred and larger
    assert db.caption(shape(), (4, 64, 32)) == "a large red triangle pointing up at the middle center"
    assert db.caption(shape(kind="ell", angle=0.0, alpha=0.5), full) == "a faint small red L shape pointing right at the bottom left"
    assert db.caption(shape(kind="square", color=np.array([30.0, 30.0, 215.0]), x=50, y=10, radius=15), full) == \
        "a medium blue square at the top center"
    assert db.caption(shape(alpha=0.1), full) == "an empty background"


def test_attribute_targets_and_which_are_defined():
    frame, cover, s = random_frame(np.random.default_rng(3), 96)
    assert frame.dtype == np.uint8 and frame.shape == (96, 96, 3) and cover.shape == (96, 96)
    square = shape(kind="square", x=48.0, y=24.0, radius=12.0)
    coverage = torch.zeros(8, 8)
    coverage[1, 3:5] = 1.0
    targets, defined = db.attributes(square, (0, 0, 96), coverage)
    assert len(targets) == len(defined) == db.NUM_ATTRIBUTES
    assert targets[0] == pytest.approx(0.0) and targets[1] == pytest.approx(-0.25) and targets[2] == pytest.approx(0.125)
    # a square looks the same every 90 degrees: only cos/sin of 4 * angle are defined
    assert defined[7:11] == [False] * 4 and defined[11:13] == [True] * 2
    assert targets[13] == pytest.approx(4 * 2 / 64) and targets[14] == pytest.approx(0.0, abs=1e-6)
    _, hidden = db.attributes(shape(alpha=0.0), (0, 0, 96), coverage)
    assert hidden[:3] == [False] * 3 and hidden[3] is True


def test_draw_shape_covers_the_shape_only():
    background = np.full((32, 32, 3), 100.0)
    frame, cover = draw_shape(background, np.zeros((32, 32, 1)), shape(x=16.0, y=16.0, radius=6.0, kind="square"))
    assert cover[16, 16] == 1.0 and cover[0, 0] == 0.0
    assert tuple(frame[16, 16]) == (225, 25, 35) and tuple(frame[0, 0]) == (100, 100, 100)


def test_training_batch_shapes():
    pixels, captions, targets, defined, coverage = db.training_batch(np.random.default_rng(0), 5, 32, 2)
    assert pixels.shape == (5, 3, 32, 32) and len(captions) == 5
    assert targets.shape == defined.shape == (5, db.NUM_ATTRIBUTES) and coverage.shape == (5, 4)
    assert ((coverage >= 0) & (coverage <= 1)).all()


def test_pretraining_learns_and_saves_a_loadable_backbone(tmp_path):
    logs = []
    path = tmp_path / "bb.pt"
    scores = db.pretrain_demo_backbone(path, "ViT-Tiny-16", steps=12, batch_size=8, seed=1, log=logs.append)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["bb.pt"]
    assert set(scores) == {"caption_top1", "captions", "position_r2"} and 0 <= scores["caption_top1"] <= 1
    first, last = (float(line.split("contrastive ")[1].split(",")[0]) for line in (logs[0], logs[-2]))
    assert len(logs) == 3 and math.isfinite(last)
    model = create_backbone("ViT-Tiny-16", str(path))  # an ordinary open_clip checkpoint
    reference = create_backbone("ViT-Tiny-16", None)
    assert not torch.equal(model.visual.positional_embedding, reference.visual.positional_embedding)
    assert first != last


def test_demo_backbone_is_made_once_and_reused(tmp_path, monkeypatch):
    calls = []

    def fake_pretrain(path, backbone, steps, seed, log):
        calls.append((backbone, steps, seed))
        torch.save(create_backbone(backbone, None).state_dict(), path)
        return {"caption_top1": 0.0, "captions": 1, "position_r2": 0.0}

    monkeypatch.setattr(db, "pretrain_demo_backbone", fake_pretrain)
    path = db.demo_backbone(tmp_path, "ViT-Tiny-16", steps=7, seed=2, log=None)
    assert path == tmp_path / "backbone-ViT-Tiny-16-seed2-steps7.pt" and calls == [("ViT-Tiny-16", 7, 2)]
    assert db.demo_backbone(tmp_path, "ViT-Tiny-16", steps=7, seed=2, log=None) == path and len(calls) == 1
    assert json.loads(path.with_suffix(".json").read_text())["params"]["steps"] == 7
    db.demo_backbone(tmp_path, "ViT-Tiny-16", steps=8, seed=2, log=None)  # other parameters: made anew
    assert len(calls) == 2


def test_trainer_resolves_pretrained_demo(tmp_path, monkeypatch):
    from vita_clip.engine import trainer
    from vita_clip.engine.config import load_config
    from vita_clip.engine.distributed import DistInfo
    from vita_clip.train import config_path

    made = []
    monkeypatch.setattr(db, "demo_backbone", lambda demo_dir, backbone, log=None: made.append((demo_dir, backbone))
                        or tmp_path / "bb.pt")
    config = load_config(config_path("demo"), overrides=[f"data.demo_dir={tmp_path}", "data.demo=false",
                                                         f"data.train_list={__file__}", "data.classes=ucf101"])
    assert config.model.pretrained == "demo"
    config, _ = trainer.prepare_data(config, DistInfo())
    assert config.model.pretrained == str(tmp_path / "bb.pt") and made == [(str(tmp_path), "ViT-Tiny-8")]
