"""Multi-view evaluation (every test view of a video through the model, softmax averaged) and the
published protocols built on it (:func:`evaluate_protocol`).

Under torchrun each process evaluates a shard of the videos (:class:`ShardSampler`); the
counts, the confusion matrix and the skipped videos are gathered, so the result equals one
process's."""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from ..data.config import DataConfig
from ..data.dataset import VideoDataset
from ..data.errors import SkippedSample, VideoDataError
from ..data.loader import VideoLoader
from ..data.protocols import PROTOCOLS, class_names, combine, locate_videos, split_classes, split_file
from ..inference import classify_views, use_classes
from ..precision import autocast, resolve_precision
from .distributed import DistInfo, all_gather_lists, all_reduce_sum
from .metrics import topk_correct

logger = logging.getLogger(__name__)


class ShardSampler(torch.utils.data.Sampler):
    """Process ``rank`` of ``world`` evaluates videos ``rank, rank + world, ...`` (no padding,
    so no video is counted twice)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class EvalResult:
    top1: float
    top5: float
    videos: int
    skipped: list[SkippedSample] = field(default_factory=list)
    per_class: list[float | None] = field(default_factory=list)  # top-1 % per class; None: no video
    confusion: list[list[int]] = field(default_factory=list)  # [true class][predicted class] -> videos

    @property
    def mean_class_accuracy(self) -> float:
        """Top-1 averaged over the classes that have videos (MMAction2's ``mean_class_accuracy``)."""
        known = [a for a in self.per_class if a is not None]
        return sum(known) / len(known) if known else float("nan")

    def as_dict(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "mean_class_accuracy": self.mean_class_accuracy,
                "per_class_top1": self.per_class, "videos": self.videos, "skipped": len(self.skipped)}


@torch.no_grad()
def evaluate(model: nn.Module, dataset: VideoDataset, batch_size: int = 4, device: torch.device | None = None,
             precision: str = "fp32", dist_info: DistInfo | None = None, num_workers: int = 0,
             progress=None) -> EvalResult:
    """Top-1/top-5 accuracy (%) of ``model`` on ``dataset`` (test views) against the model's
    current classes. Each video's ``V = clips x crops`` views are classified together and
    their softmax probabilities averaged (the published protocol). ``progress``: a tqdm-like
    object updated with the videos done (this process's)."""
    dist_info = dist_info or DistInfo()
    device = device or next(model.parameters()).device
    precision = resolve_precision(precision, device)
    if dataset.train:
        raise ValueError("evaluate() needs a dataset built with train=False (deterministic test views)")
    was_training = model.training
    model.eval()
    loader = VideoLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), dist_info.rank,
                         dist_info.world_size), num_workers=num_workers, drop_last=False)
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # top-1 hits, top-5 hits
    with autocast(device, precision):
        text = model.class_text_features()
    n_cls = text.shape[0]
    confusion = torch.zeros(n_cls, n_cls, dtype=torch.float64, device=device)
    for batch in loader:
        probs = classify_views(model, batch["video"].to(device, non_blocking=True), text, precision)
        labels = batch["label"].to(device)
        hits = topk_correct(probs, labels, ks=(1, 5))
        totals += torch.tensor([hits[1], hits[5]], dtype=torch.float64, device=device)
        confusion.index_put_((labels, probs.argmax(dim=-1)), torch.ones_like(labels, dtype=torch.float64),
                             accumulate=True)
        if progress is not None:
            progress.update(len(labels) + len(batch["skipped"]))
    all_reduce_sum(totals, dist_info)
    all_reduce_sum(confusion, dist_info)
    skipped = all_gather_lists(loader.skipped, dist_info)
    model.train(was_training)
    n = int(confusion.sum())
    if n == 0:
        first = skipped[0] if skipped else None
        raise VideoDataError(first.path if first else "the evaluation set",
                             f"{first.reason if first else 'no videos'}; no video of the evaluation set could be read "
                             f"({len(skipped)} skipped)")
    counts = confusion.sum(dim=1).tolist()
    class_top1 = [100 * float(confusion[c, c]) / count if count else None for c, count in enumerate(counts)]
    return EvalResult(top1=100 * float(totals[0]) / n, top5=100 * float(totals[1]) / n, videos=n,
                      skipped=skipped, per_class=class_top1, confusion=confusion.long().tolist())


@contextlib.contextmanager
def _one_report_for_skips():
    """The dataset warns once per skipped video and the loader lists them all; a protocol run
    reports a count and an example instead, and keeps the list in its results (DataLoader
    workers inherit the levels when they start)."""
    loggers = [logging.getLogger(f"vita_clip.data.{name}") for name in ("dataset", "loader")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def protocol_parts(protocol: str, val_list: str | None = None, classes: list[str] | None = None,
                   model_classes: list[str] | None = None) -> list[tuple[str, str, list[str]]]:
    """``(label, list file, class names)`` of each part of ``protocol``."""
    if protocol == "supervised":
        if val_list is None:
            raise ValueError("protocol 'supervised' needs --val-list")
        return [("val", val_list, classes or model_classes)]
    if protocol in PROTOCOLS:
        return [(label, str(split_file(split)), class_names(split_classes(split)))
                for label, split in PROTOCOLS[protocol].parts]
    raise ValueError(f"unknown protocol {protocol!r}; known: supervised, {', '.join(PROTOCOLS)}")


def evaluate_protocol(model, protocol: str, data_root: str, data: DataConfig, batch_size: int = 4,
                      templates: str | None = None, val_list: str | None = None, classes: list[str] | None = None,
                      device=None, num_workers: int = 2, limit: int | None = None, precision: str = "fp32",
                      dist_info: DistInfo | None = None, progress: bool = False) -> dict:
    """Evaluate ``model`` under ``protocol``; returns ``{"parts": [...], "summary": {...}}``.

    The videos of each list are found under ``data_root`` in the flat or the class-folder
    layout (:func:`~vita_clip.data.protocols.locate_videos`), checked before decoding starts;
    listed files that are absent are reported once and counted as skipped."""
    dist_info = dist_info or DistInfo()
    device = device or next(model.parameters()).device
    precision = resolve_precision(precision, device)
    rows = []
    for label, list_file, names in protocol_parts(protocol, val_list, classes, model.classnames):
        how = use_classes(model, names, templates)
        dataset = VideoDataset(list_file, "", names, train=False, config=data)
        if limit is not None:
            dataset.entries = dataset.entries[:limit]
        located = locate_videos(dataset.entries, data_root, names, list_name=list_file)
        if located.missing and dist_info.is_main:
            logger.warning("%s: %d of %d listed videos are not under %r (e.g. %s): evaluated without them, "
                           "counted as skipped", list_file, len(located.missing), len(dataset.entries),
                           data_root, located.missing[0].path)
        if not located.entries:
            raise FileNotFoundError(f"{list_file}: none of its {len(dataset.entries)} videos is under {data_root!r}")
        dataset.entries = located.entries
        shard = len(ShardSampler(len(dataset), dist_info.rank, dist_info.world_size))  # the bar follows rank 0's shard
        bar = tqdm(total=shard, desc=f"eval {label}" + (f" (shard 1 of {dist_info.world_size})" if dist_info.enabled else ""),
                   unit="video", dynamic_ncols=True, disable=not (progress and dist_info.is_main))
        with _one_report_for_skips():
            result = evaluate(model, dataset, batch_size=batch_size, device=device, precision=precision,
                              dist_info=dist_info, num_workers=num_workers, progress=bar)
        bar.close()
        skipped = located.missing + result.skipped
        rows.append({"part": label, "list": list_file, "layout": located.layout, "classes": len(names),
                     "class_names": names, "text": how, **result.as_dict(), "skipped": len(skipped),
                     "skipped_videos": [str(s) for s in skipped], "confusion": result.confusion})
    return {"protocol": protocol, "precision": precision, "views": [data.sampling.num_clips, data.transform.num_crops],
            "frames": data.sampling.num_frames, "parts": rows, "summary": combine(protocol, rows)}
