"""Run configs: nested dataclasses, read from YAML, overridden from the command line.

A run config is plain data (built by :mod:`vita_clip.config_builder`); every unknown key and
every bad value is an error that names the key, e.g. ``optim.lr: expected a number, got 'x'``.
Command-line overrides use dotted keys: ``optim.lr=1e-3 data.sampling.num_frames=16``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config_builder import apply_overrides, build, read_yaml
from ..data.config import DataSection
from ..precision import PRECISIONS

DEMO_PRETRAINED = "demo"


@dataclass
class ModelSection:
    """Which model to build: a :func:`vita_clip.create_model` name, its CLIP weights
    (``"default"``: the named model's, e.g. ``openai``; ``null``: random; ``"demo"``: a tiny
    CLIP pretrained on rendered frames and cached in ``data.demo_dir``, see
    :mod:`vita_clip.demo.backbone`; or an open_clip tag or file), a checkpoint to
    start from, and config overrides (``options``, e.g. ``{train_cls_proj: false}``; the fused
    kernels are ``options.fused``, what ``--fused`` sets). ``num_frames`` follows
    ``data.sampling.num_frames`` unless set in ``options``."""

    name: str = "vita-clip-b16"
    pretrained: str | None = "default"
    checkpoint: str | None = None
    options: dict = field(default_factory=dict)


@dataclass
class OptimSection:
    """AdamW with linear warmup then cosine decay, stepped once per optimizer step.

    Weight decay applies to every trainable tensor, as in both papers' code.
    """

    lr: float = 4e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = None


@dataclass
class TrainConfig:
    """A training run. ``batch_size`` is the global batch of one optimizer step, summed over
    processes; each process runs micro-batches of ``micro_batch_size`` and accumulates.
    ``precision`` may be ``auto``: the run resolves it on its device
    (:func:`~vita_clip.precision.resolve_precision`) and records the concrete one."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    steps: int = 30000
    batch_size: int = 256
    micro_batch_size: int = 16
    precision: str = "auto"
    compile: bool = False
    seed: int = 0
    output_dir: str = "runs/vita-clip"
    log_every: int = 10
    eval_every: int = 0
    save_every: int = 1000
    keep_checkpoints: int = 2
    eval_views: tuple[int, int] = (3, 1)
    device: str = "auto"

    def __post_init__(self):
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("steps", "batch_size", "micro_batch_size", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: expected a positive integer, got {getattr(self, name)}")
        for name in ("eval_every", "save_every"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: expected >= 0, got {getattr(self, name)}")
        if self.optim.lr <= 0 or self.optim.weight_decay < 0 or not 0 <= self.optim.min_lr_ratio <= 1:
            problems.append(f"optim: lr must be > 0, weight_decay >= 0, min_lr_ratio in [0, 1]; got {self.optim}")
        if self.optim.warmup_steps < 0 or self.optim.warmup_steps > self.steps:
            problems.append(f"optim.warmup_steps: expected 0..steps ({self.steps}), got {self.optim.warmup_steps}")
        if len(self.eval_views) != 2 or min(self.eval_views) < 1:
            problems.append(f"eval_views: expected [clips, crops] >= 1, got {self.eval_views}")
        if problems:
            raise ValueError("invalid config:\n  " + "\n  ".join(problems))


def load_config(path: str | Path | None = None, overrides: list[str] = (), cls=TrainConfig):
    """A run config from a YAML file (or the defaults) plus dotted ``key=value`` overrides."""
    values = read_yaml(path) if path is not None else {}
    values = apply_overrides(values, list(overrides))
    source = f"{path}: " if path is not None else ""
    try:
        return build(cls, values)
    except ValueError as err:
        raise ValueError(f"{source}{err}") from err
