"""What a user looks at: accuracy, a CSV of metrics, TensorBoard when installed, PNG curves."""
from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path

import torch


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[int, int]:
    """How many rows have their label among the ``k`` highest scores, for each ``k``."""
    top = scores.topk(min(max(ks), scores.shape[-1]), dim=-1).indices
    hits = top == labels[:, None]
    return {k: int(hits[:, :k].any(dim=-1).sum()) for k in ks}


COLUMNS = ("step", "split", "loss", "top1", "top5", "lr", "videos_per_s", "grad_norm", "skipped")


class MetricsWriter:
    """Appends rows to ``metrics.csv`` (one per logged step or evaluation, columns
    :data:`COLUMNS`) and mirrors them to TensorBoard when it is installed. Only the main
    process writes; a resumed run keeps the rows up to its checkpoint's step."""

    def __init__(self, output_dir: str | os.PathLike, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.csv"
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if resume_step and self.path.exists():
            rows = [r for r in read_metrics(self.path) if int(r["step"]) <= resume_step]
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))
        except Exception:  # tensorboard is optional
            self.tb = None

    def write(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise KeyError(f"metrics {sorted(unknown)} have no column in {self.path.name}")
        if split == "train":  # the trainer logs its evaluations itself
            logging.getLogger("vita_clip").info("step %d %s: %s", step, split, "  ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()))
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow(
                {"step": step, "split": split, **{k: f"{v:.6g}" if isinstance(v, float) else v for k, v in values.items()}})
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(f"{split}/{key}", value, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_metrics(csv_path: str | os.PathLike, out_path: str | os.PathLike) -> Path | None:
    """Loss, accuracy and learning-rate curves of a run as one PNG (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.getLogger(__name__).warning("matplotlib is not installed: no plots")
        return None
    rows = read_metrics(csv_path)
    panels = [("loss", "loss"), ("accuracy (%)", "top1"), ("learning rate", "lr")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (title, key) in zip(axes, panels):
        for split, style in (("train", "-"), ("val", "o-")):
            points = [(int(r["step"]), float(r[key])) for r in rows
                      if r.get("split") == split and r.get(key) not in (None, "") and math.isfinite(float(r[key]))]
            if points:
                ax.plot(*zip(*points), style, label=split, markersize=4)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def plot_confusion(confusion: list[list[int]], classes: list[str], out_path: str | os.PathLike,
                   title: str = "") -> Path | None:
    """A confusion matrix (rows: true class, columns: predicted; each row normalised to the
    share of its videos) as a PNG (None without matplotlib). Class names label the axes up to
    60 classes; beyond that only the colours are shown."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.getLogger(__name__).warning("matplotlib is not installed: no confusion matrix")
        return None
    matrix = torch.tensor(confusion, dtype=torch.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] != len(classes):
        raise ValueError(f"confusion matrix of shape {tuple(matrix.shape)} for {len(classes)} classes")
    rows = matrix / matrix.sum(dim=1, keepdim=True).clamp_min(1)
    n = len(classes)
    side = min(max(4.0, 0.22 * n + 2), 24.0)
    fig, ax = plt.subplots(figsize=(side, side))
    image = ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    if n <= 60:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix (share of each true class)")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    out_path = Path(out_path)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def setup_logging(output_dir: str | os.PathLike | None, main: bool) -> logging.Logger:
    """The ``vita_clip`` logger: messages to stderr (main process) and to ``train.log``."""
    logger = logging.getLogger("vita_clip")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    if not main:
        logger.addHandler(logging.NullHandler())
        return logger
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler()
    console.setFormatter(fmt)
    logger.addHandler(console)
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(Path(output_dir) / "train.log")
        file.setFormatter(fmt)
        logger.addHandler(file)
    return logger
