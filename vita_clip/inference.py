"""What evaluation and prediction share: the model to run, its data recipe, its classes, the
model's preprocessing, and :func:`predict` (the Python API behind
``python -m vita_clip.predict``)::

    import vita_clip
    model, preprocess = vita_clip.create_model_and_transforms("vita-clip-tiny", ["a", "b"], pretrained=None)
    views = vita_clip.load_video("clip.mp4", model)      # (V, T, 3, S, S): the model's test views
    probs = model(views).softmax(-1).mean(0)              # averaged over the views

    from vita_clip.inference import predict
    predict(["clip.mp4"], ["surfing", "juggling"], checkpoint="runs/k400/model.pt")
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .checkpoints.reader import read_checkpoint
from .config_builder import build
from .data.batching import collate_clips
from .data.config import DataConfig
from .data.dataset import load_clip, plan_clip
from .data.errors import SkippedSample, VideoDataError
from .data.transforms import transform_clip
from .models.registry import create_model, data_recipe, load_model
from .precision import autocast, resolve_precision

logger = logging.getLogger(__name__)


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
        return "templates 'class_only' (the model's class-specific prompts cannot describe these classes)"


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



@torch.no_grad()
def classify_views(model, views: torch.Tensor, text: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Class probabilities ``(B, classes)`` of ``B`` videos given as ``(B, V, T, 3, S, S)`` test
    views: all ``B * V`` views in one model call, each view's softmax, averaged over the ``V``
    views of a video (the published multi-view protocol)."""
    b, v = views.shape[:2]
    with autocast(views.device, precision):
        logits = model(views.flatten(0, 1), text_features=text)
    return logits.float().softmax(dim=-1).view(b, v, -1).mean(dim=1)


# -- the model's preprocessing -----------------------------------------------------------------------


@dataclass(frozen=True)
class VideoPreprocess:
    """A video (a file, or all its decoded frames as uint8 ``(N, H, W, 3)``) -> the model's test
    views ``(V, T, 3, S, S)`` with ``V = clips x crops``: the sampling and transform of the
    model's data recipe (:attr:`config`)."""

    config: DataConfig

    @property
    def views(self) -> tuple[int, int]:
        return self.config.sampling.num_clips, self.config.transform.num_crops

    def __call__(self, video: str | os.PathLike | torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(video, (str, os.PathLike)):
            return load_clip(video, self.config)
        frames = torch.as_tensor(np.asarray(video) if not isinstance(video, torch.Tensor) else video)
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 (N, H, W, 3) (all frames of one video), got {frames.dtype} "
                             f"{tuple(frames.shape)}")
        indices, rng = plan_clip(self.config, False, 0, 0, frames.shape[0])
        return transform_clip(frames[torch.from_numpy(indices.reshape(-1))], indices.shape[0], self.config.transform,
                              False, rng)


def preprocess_for(model, checkpoint=None, frames: int | None = None, views: tuple[int, int] | None = None
                   ) -> VideoPreprocess:
    """The preprocessing that matches ``model`` (its checkpoint's recipe when known, else its
    family's); ``frames`` / ``views`` override the clip length and the (clips, crops) views."""
    return VideoPreprocess(replace(model_data_config(model, checkpoint, frames, views), on_error="raise"))


def load_video(path: str | os.PathLike, model, views: tuple[int, int] | None = None,
               frames: int | None = None) -> torch.Tensor:
    """One video file as ``model``'s input: its test views ``(V, T, 3, S, S)``, ready for
    ``model(views)``. Raises :class:`~vita_clip.data.VideoDataError` naming an unreadable file."""
    return preprocess_for(model, frames=frames, views=views)(path)


def create_model_and_transforms(name: str, classnames: Sequence[str], **kwargs):
    """:func:`~vita_clip.create_model` and the :class:`VideoPreprocess` of its data recipe, in
    open_clip's spirit: ``model, preprocess = create_model_and_transforms(...)``."""
    model = create_model(name, classnames, **kwargs)
    return model, preprocess_for(model, kwargs.get("checkpoint"))


def load_model_and_transforms(checkpoint: str | os.PathLike, **kwargs):
    """:func:`~vita_clip.load_model` and the :class:`VideoPreprocess` its checkpoint was trained with."""
    model = load_model(checkpoint, **kwargs)
    return model, preprocess_for(model, checkpoint)


# -- prediction --------------------------------------------------------------------------------------


@dataclass
class Prediction:
    video: str
    top: list[tuple[str, float]]  # (class name, probability), most likely first

    def as_dict(self) -> dict:
        return {"video": self.video, "top": [{"class": c, "probability": p} for c, p in self.top]}


class VideoFiles(torch.utils.data.Dataset):
    """Video files without labels, decoded into test views (in DataLoader workers); a file that
    cannot be read is a :class:`SkippedSample` (``on_error="skip"``) or raises."""

    def __init__(self, paths: Sequence[str], config: DataConfig):
        self.paths, self.config = [str(p) for p in paths], config

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict | SkippedSample:
        try:
            return {"video": load_clip(self.paths[index], self.config), "label": -1, "index": index}
        except VideoDataError as err:
            if self.config.on_error == "raise":
                raise
            return SkippedSample.from_error(err, index)


class Predictor:
    """A model ready to classify videos against ``classes`` (default: the model's own).

    ``text_source`` says how the class text features are made (the model's own prompts or
    hand-written templates, and why); ``precision`` is the resolved one
    (:func:`~vita_clip.precision.resolve_precision`)."""

    def __init__(self, model, classes: Sequence[str] | None = None, templates: str | Sequence[str] | None = None, *,
                 checkpoint=None, frames: int | None = None, views: tuple[int, int] | None = None,
                 device: str | torch.device | None = None, precision: str = "auto"):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        classes = model.classnames if classes is None else [c.strip() for c in classes if c.strip()]
        if not classes:
            raise ValueError("no class names given")
        self.classes = list(classes)
        self.text_source = use_classes(self.model, self.classes, templates)
        self.data = model_data_config(self.model, checkpoint, frames, views)
        with torch.no_grad(), autocast(self.device, self.precision):
            self.text = self.model.class_text_features()

    @property
    def views(self) -> tuple[int, int]:
        return self.data.sampling.num_clips, self.data.transform.num_crops

    def predict_batches(self, paths: Sequence[str | os.PathLike], topk: int = 5, batch_size: int = 8,
                        num_workers: int = 0, on_error: str = "skip"
                        ) -> Iterator[tuple[list[Prediction], list[SkippedSample]]]:
        """The predictions and the skipped files of each batch of ``paths``, in order, as they are
        made (decoding runs ahead in ``num_workers`` DataLoader workers)."""
        files = VideoFiles(paths, replace(self.data, on_error=on_error))
        loader = torch.utils.data.DataLoader(files, batch_size=batch_size, num_workers=num_workers,
                                             collate_fn=collate_clips, pin_memory=self.device.type == "cuda")
        k = min(topk, len(self.classes))
        for batch in loader:
            predictions = []
            if batch["video"] is not None:
                probs = classify_views(self.model, batch["video"].to(self.device, non_blocking=True), self.text,
                                       self.precision)
                values, indices = probs.topk(k, dim=-1)
                for i, vals, idx in zip(batch["index"].tolist(), values.tolist(), indices.tolist()):
                    predictions.append(Prediction(files.paths[i], [(self.classes[c], v) for v, c in zip(vals, idx)]))
            yield predictions, batch["skipped"]


def predict(videos: Sequence[str | os.PathLike], classes: Sequence[str] | None = None, *, checkpoint=None,
            model=None, pretrained: str | None = None, templates: str | Sequence[str] | None = None, topk: int = 5,
            views: tuple[int, int] | None = None, frames: int | None = None, device: str | None = None,
            precision: str = "auto", batch_size: int = 8, num_workers: int = 0,
            on_error: str = "raise", skipped: list | None = None) -> list[Prediction]:
    """Top-``topk`` classes of each video with their probabilities.

    ``classes`` default to the checkpoint's; ``model`` may also be an already built
    VitaCLIP/ViFiCLIP instance; ``views`` (clips, crops) default to the model's recipe.
    ``on_error="raise"`` raises :class:`~vita_clip.data.VideoDataError` naming the first video
    that cannot be read; ``"skip"`` leaves it out and appends it to ``skipped`` when given.
    """
    if isinstance(model, torch.nn.Module):
        net = model
    else:
        if classes is None and checkpoint is None:
            raise ValueError("give class names (or a checkpoint, whose classes are the default)")
        net = load_or_create(checkpoint, model, pretrained, classes or ("placeholder",), default_model="vifi-clip-b16")
    predictor = Predictor(net, classes, templates, checkpoint=checkpoint, frames=frames, views=views, device=device,
                          precision=precision)
    out: list[Prediction] = []
    for predictions, bad in predictor.predict_batches(videos, topk, batch_size, num_workers, on_error):
        out += predictions
        if skipped is not None:
            skipped += bad
    return out


VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv")


def expand_video_paths(specs: Sequence[str], extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[str]:
    """Files, folders (searched recursively for ``extensions``) and glob patterns -> sorted
    unique file paths. A spec that matches nothing raises ``FileNotFoundError`` naming it."""
    import glob

    found: list[str] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            matches = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in extensions and p.is_file())
            if not matches:
                raise FileNotFoundError(f"{spec}: no video files ({', '.join(extensions)}) in this folder or below")
        elif path.is_file():
            matches = [spec]
        elif glob.has_magic(spec):
            matches = sorted(p for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"{spec}: the pattern matches no file")
        else:
            raise FileNotFoundError(f"{spec}: no such video file or folder")
        found += matches
    return list(dict.fromkeys(found))
