"""The model carries its preprocessing: load_video / create_model_and_transforms give the test
views of the model's recipe, equal to what evaluation feeds it."""
from __future__ import annotations

from dataclasses import replace

import torch

import vita_clip
from helpers import save_tiny_checkpoint, write_sliding_clip
from vita_clip.data.decode_cpu import VideoReader
from vita_clip.engine.metrics import MetricsWriter, setup_logging
from vita_clip.inference import model_data_config, predict


def test_load_video_gives_the_recipes_views(tmp_path):
    video = write_sliding_clip(tmp_path / "v.webm", seed=3, frames=20)
    model, preprocess = vita_clip.create_model_and_transforms("vita-clip-tiny", ["a", "b"])
    views = vita_clip.load_video(video, model)
    assert preprocess.views == (3, 1)  # Vita-CLIP evaluates 3 clips x 1 crop
    assert views.shape == (3, model.config.num_frames, 3, 32, 32) and views.dtype == torch.float32
    assert torch.equal(preprocess(video), views)
    # the same from already decoded frames
    with VideoReader(video) as reader:
        frames = torch.from_numpy(reader.read(list(range(reader.num_frames))))
    assert torch.allclose(preprocess(frames), views, atol=1e-6)
    assert vita_clip.load_video(video, model, views=(2, 1), frames=3).shape == (2, 3, 3, 32, 32)

    # what the views give equals predict() (the same recipe, the same averaging)
    with torch.no_grad():
        probs = model.eval()(views).softmax(-1).mean(0)
    top = predict([video], model=model, topk=2, precision="fp32")[0].top  # auto may be bf16 on this CPU
    assert [name for name, _ in top] == [model.classnames[i] for i in probs.argsort(descending=True).tolist()]
    torch.testing.assert_close(torch.tensor([p for _, p in top]), probs.sort(descending=True).values, rtol=1e-5, atol=1e-6)


def test_load_model_and_transforms_matches_the_checkpoint_recipe(tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / "model.pt", ["x", "y", "z"])
    model, preprocess = vita_clip.load_model_and_transforms(checkpoint)
    assert model.classnames == ["x", "y", "z"]
    assert preprocess.config == replace(model_data_config(model, checkpoint), on_error="raise")


def test_training_metrics_reach_train_log(tmp_path):
    setup_logging(tmp_path, main=True)
    writer = MetricsWriter(tmp_path)
    writer.write(4, "train", {"loss": 1.25, "top1": 37.5, "lr": 1e-3})
    writer.close()
    assert "step 4 train: loss 1.25  top1 37.5  lr 0.001" in (tmp_path / "train.log").read_text()
