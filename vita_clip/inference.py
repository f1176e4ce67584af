"""What evaluation and prediction share: the model to run, its data recipe, its classes, and
:func:`predict` (the Python API behind ``python -m vita_clip.predict``)::

    from vita_clip.inference import predict
    predict(["clip.mp4"], ["surfing", "juggling"], checkpoint="runs/k400/model.pt")
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from .checkpoints.reader import read_checkpoint
from .config_builder import build
from .data.config import DataConfig
from .data.dataset import load_clip
from .models.registry import create_model, data_recipe, load_model


def load_or_create(checkpoint=None, model: str | None = None, pretrained: str | None = None,
                   classes=("placeholder",), default_model: str | None = None):
    """The model to evaluate or predict with: a vita-clip checkpoint (config, classes and
    weights), or the named model, optionally loading an original Vita-CLIP / ViFi-CLIP
    checkpoint. ``classes`` only seed the model; the protocol or caller sets the real ones."""
    kwargs = {"pretrained": pretrained} if pretrained is not None else {}
    if checkpoint is not None and model is None:
        return load_model(checkpoint, **kwargs)
    model = model or default_model
    if model is None:
        raise ValueError("give --checkpoint (a vita-clip checkpoint) or --model NAME [--checkpoint original.pth]")
    return create_model(model, list(classes), checkpoint=checkpoint, **kwargs)


def use_classes(model, classes: list[str], templates: str | None) -> str:
    """Point the model at ``classes``; returns how their text features are made."""
    if templates is not None:
        model.set_classes(classes, templates=templates)
        return f"templates {templates!r}"
    if classes == model.classnames and model.templates is None:
        return "the model's own prompts"
    try:
        model.set_classes(classes)
        return "the model's own prompts"
    except ValueError:  # class-specific contexts cannot describe new classes
        model.set_classes(classes, templates="class_only")
        return "templates 'class_only'"


def run_data_config(checkpoint) -> DataConfig | None:
    """The data recipe a checkpoint carries (sampling, transforms, test views of the run that
    wrote it), or ``None`` (original checkpoints, state dicts). Read from the checkpoint
    itself: never from a file beside it or from the current directory."""
    if checkpoint is None or isinstance(checkpoint, torch.nn.Module):
        return None
    loaded = checkpoint if isinstance(checkpoint, dict) and "kind" in checkpoint else read_checkpoint(checkpoint)
    data = loaded.get("data") if loaded.get("kind") == "vita-clip" else None
    return build(DataConfig, data, prefix="data.") if data is not None else None


def model_data_config(model, checkpoint: str | os.PathLike | None = None, frames: int | None = None,
                      views: tuple[int, int] | None = None) -> DataConfig:
    """The data recipe to run ``model`` with: the one it was trained with when known (the
    ``data_config`` :func:`~vita_clip.load_model` restores from the checkpoint, else the one
    ``checkpoint`` carries), else its family's (:func:`~vita_clip.models.registry.data_recipe`);
    ``frames`` and ``views`` (temporal clips, spatial crops) override the clip length and the
    test views."""
    # models from create_model / load_model hold their checkpoint's recipe (or None) already
    data = model.data_config if hasattr(model, "data_config") else run_data_config(checkpoint)
    data = data or data_recipe(model, frames)
    sampling, transform = data.sampling, data.transform
    if frames:
        sampling = replace(sampling, num_frames=frames)
    if views is not None:
        sampling, transform = replace(sampling, num_clips=views[0]), replace(transform, num_crops=views[1])
    return replace(data, sampling=sampling, transform=transform)


def parse_views(text: str) -> tuple[int, int]:
    try:
        clips, crops = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--views must look like 4x3 (clips x crops), got {text!r}") from None
    return clips, crops


@dataclass
class Prediction:
    video: str
    top: list[tuple[str, float]]  # (class name, probability), most likely first

    def as_dict(self) -> dict:
        return {"video": self.video, "top": [{"class": c, "probability": p} for c, p in self.top]}


@torch.no_grad()
def predict(videos: Sequence[str | os.PathLike], classes: Sequence[str], *, checkpoint=None, model=None,
            pretrained: str | None = None, templates: str | Sequence[str] | None = None, topk: int = 5,
            views: tuple[int, int] = (1, 1), frames: int | None = None, device: str | None = None
            ) -> list[Prediction]:
    """Top-``topk`` classes of each video with their probabilities.

    ``model`` may also be an already built VitaCLIP/ViFiCLIP instance. Raises
    :class:`~vita_clip.data.VideoDataError` naming the video that cannot be read.
    """
    classes = [c.strip() for c in classes if c.strip()]
    if not classes:
        raise ValueError("no class names given")
    if isinstance(model, torch.nn.Module):
        net = model
    else:
        net = load_or_create(checkpoint, model, pretrained, classes, default_model="vifi-clip-b16")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net.to(device).eval()
    use_classes(net, classes, templates)
    data = replace(model_data_config(net, checkpoint, frames, views), on_error="raise")
    text = net.class_text_features()
    out = []
    for video in videos:
        clip = load_clip(video, data)  # (V, T, 3, S, S)
        probs = net(clip.to(device), text_features=text).float().softmax(-1).mean(0)
        values, indices = probs.topk(min(topk, len(classes)))
        out.append(Prediction(str(video), [(classes[i], float(v)) for v, i in zip(values, indices)]))
    return out
