"""Run configs: nested dataclasses, read from YAML, overridden from the command line.

A run config is plain data (:func:`vita_clip.config.config_to_dict` / ``load_config``); every unknown key and
every bad value is an error that names the key, e.g. ``optim.lr: expected a number, got 'x'``.
Command-line overrides use dotted keys: ``optim.lr=1e-3 data.sampling.num_frames=16``.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.sampling import SamplingConfig
from ..data.transforms import TransformConfig

PRECISIONS = ("fp32", "bf16", "fp16")


DEMO_PRETRAINED = "demo"


@dataclass
class ModelSection:
    """Which model to build: a :func:`vita_clip.create_model` name, its CLIP weights
    (``"default"``: the named model's, e.g. ``openai``; ``null``: random; ``"demo"``: a tiny
    CLIP pretrained on rendered frames and cached in ``data.demo_dir``, see
    :mod:`vita_clip.demo_backbone`; or an open_clip tag or file), a checkpoint to
    start from, and config overrides (``options``, e.g. ``{train_cls_proj: false}``).
    ``num_frames`` follows ``data.sampling.num_frames`` unless set in ``options``."""

    name: str = "vita-clip-b16"
    pretrained: str | None = "default"
    checkpoint: str | None = None
    options: dict = field(default_factory=dict)


@dataclass
class DataSection:
    """Where the videos are and how clips are made from them.

    ``train_list`` / ``val_list``: ``path label`` or ``path,label`` lines; relative paths are
    joined onto ``data_root``. ``classes``: a class file (``id,name`` CSV, JSON list or one
    name per line) or the name of a shipped label file (e.g. ``k400``). ``demo``: when no
    lists are given, generate and use the demo dataset.
    """

    train_list: str | None = None
    val_list: str | None = None
    data_root: str = ""
    classes: str | None = None
    backend: str = "auto"
    num_workers: int = 2
    on_error: str = "skip"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    demo: bool = False
    demo_dir: str = "data/demo"


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
    processes; each process runs micro-batches of ``micro_batch_size`` and accumulates."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    steps: int = 30000
    batch_size: int = 256
    micro_batch_size: int = 16
    precision: str = "fp32"
    compile: bool = False
    fused: bool = False
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
            problems.append(f"precision: expected one of {PRECISIONS}, got {self.precision!r}")
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


# -- building configs from plain data ------------------------------------------------------------


def build(cls, values: dict, prefix: str = ""):
    """``cls`` from a (nested) dict; every unknown key or bad value names its dotted path."""
    if not isinstance(values, dict):
        raise ValueError(f"{prefix.rstrip('.') or cls.__name__}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        raise ValueError(f"unknown config key {prefix + unknown[0]!r}; known keys here: {sorted(fields)}")
    kwargs = {}
    for key, value in values.items():
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from err


def _coerce(value: Any, hint: Any, path: str):
    """Check ``value`` against a type hint, converting where YAML's types differ (lists -> tuples, ints -> floats)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{path}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is Any or origin is dict or hint is dict:
        if (origin is dict or hint is dict) and not isinstance(value, dict):
            raise ValueError(f"{path}: expected a mapping, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-3"`` -> (``["optim", "lr"]``, 0.001); values are read as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r}: expected key=value, e.g. optim.lr=1e-3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ValueError(f"override {text!r}: cannot read the value: {err}") from err
    return key.split("."), value


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    values = _deepcopy(values)
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return values


def _deepcopy(values):
    if isinstance(values, dict):
        return {k: _deepcopy(v) for k, v in values.items()}
    if isinstance(values, list):
        return [_deepcopy(v) for v in values]
    return values


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of config keys at the top level")
    base = values.pop("base", None)
    if base is not None:  # configs may extend another one, relative to their own folder
        values = merge(read_yaml(path.parent / base), values)
    return values


def merge(base: dict, update: dict) -> dict:
    out = _deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = _deepcopy(value)
    return out


def load_config(path: str | Path | None = None, overrides: list[str] = (), cls=TrainConfig):
    """A run config from a YAML file (or the defaults) plus dotted ``key=value`` overrides."""
    values = read_yaml(path) if path is not None else {}
    values = apply_overrides(values, list(overrides))
    source = f"{path}: " if path is not None else ""
    try:
        return build(cls, values)
    except ValueError as err:
        raise ValueError(f"{source}{err}") from err
