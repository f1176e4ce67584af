"""Multi-view evaluation (every test view of a video through the model, softmax averaged) and the
published protocols built on it (:func:`evaluate_protocol`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.config import DataConfig
from ..data.dataset import VideoDataset
from ..data.errors import SkippedSample
from ..data.loader import VideoLoader
from ..data.protocols import PROTOCOLS, class_names, combine, split_classes, split_file
from ..inference import use_classes
from .distributed import DistInfo, all_reduce_sum
from .metrics import topk_correct
from .step import autocast_context


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
    their softmax probabilities averaged (the published protocol)."""
    dist_info = dist_info or DistInfo()
    device = device or next(model.parameters()).device
    if dataset.train:
        raise ValueError("evaluate() needs a dataset built with train=False (deterministic test views)")
    was_training = model.training
    model.eval()
    loader = VideoLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), dist_info.rank,
                         dist_info.world_size), num_workers=num_workers, drop_last=False)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # top-1 hits, top-5 hits, videos
    with autocast_context(device, precision):
        text = model.class_text_features()
    per_class = torch.zeros(2, text.shape[0], dtype=torch.float64, device=device)  # top-1 hits, videos
    for batch in loader:
        views = batch["video"].to(device, non_blocking=True)
        b, v = views.shape[:2]
        with autocast_context(device, precision):
            logits = model(views.flatten(0, 1), text_features=text)
        probs = logits.float().softmax(dim=-1).view(b, v, -1).mean(dim=1)
        labels = batch["label"].to(device)
        hits = topk_correct(probs, labels, ks=(1, 5))
        totals += torch.tensor([hits[1], hits[5], b], dtype=torch.float64, device=device)
        per_class[0].index_add_(0, labels, (probs.argmax(dim=-1) == labels).double())
        per_class[1].index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        if progress is not None:
            progress.update(b)
    all_reduce_sum(totals, dist_info)
    all_reduce_sum(per_class, dist_info)
    model.train(was_training)
    n = int(totals[2])
    if n == 0:
        raise RuntimeError(f"no video of the evaluation set could be read ({len(loader.skipped)} skipped)")
    class_top1 = [100 * float(h) / float(c) if c else None for h, c in zip(*per_class.tolist())]
    return EvalResult(top1=100 * float(totals[0]) / n, top5=100 * float(totals[1]) / n, videos=n,
                      skipped=list(loader.skipped), per_class=class_top1)


def evaluate_protocol(model, protocol: str, data_root: str, data: DataConfig, batch_size: int = 4,
                      templates: str | None = None, val_list: str | None = None, classes: list[str] | None = None,
                      device=None, num_workers: int = 2, limit: int | None = None) -> dict:
    """Evaluate ``model`` under ``protocol``; returns ``{"parts": [...], "summary": {...}}``."""
    if protocol == "supervised":
        if val_list is None:
            raise ValueError("protocol 'supervised' needs --val-list")
        parts = [("val", val_list, classes or model.classnames)]
    elif protocol in PROTOCOLS:
        parts = [(label, str(split_file(split)), class_names(split_classes(split)))
                 for label, split in PROTOCOLS[protocol].parts]
    else:
        raise ValueError(f"unknown protocol {protocol!r}; known: supervised, {', '.join(PROTOCOLS)}")
    rows = []
    for label, list_file, names in parts:
        how = use_classes(model, names, templates)
        dataset = VideoDataset(list_file, data_root, names, train=False, config=data)
        if limit is not None:
            dataset.entries = dataset.entries[:limit]
        result = evaluate(model, dataset, batch_size=batch_size, device=device, num_workers=num_workers)
        rows.append({"part": label, "list": list_file, "classes": len(names), "text": how, **result.as_dict()})
    return {"protocol": protocol, "parts": rows, "summary": combine(protocol, rows)}
