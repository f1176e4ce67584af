"""Writing and loading model weights: this package's checkpoint files and checked state-dict loading.

A vita-clip checkpoint is a plain dict (loadable with ``torch.load(weights_only=True)``)::

    {"format": "vita-clip", "version": 1, "architecture": "vita" | "vifi",
     "config": {...}, "prompt_classnames": [...], "classnames": [...], "templates": [...] | None,
     "trainable_only": bool, "state_dict": {...}}

With ``trainable_only`` the frozen CLIP weights are left out (they come from
``config["pretrained"]`` when the model is rebuilt): 30 M instead of 187 M parameters for a
Vita-CLIP B/16. Files are written atomically (temporary file + rename).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..config_builder import config_to_dict
from ..errors import CheckpointMismatchError

FORMAT = "vita-clip"
VERSION = 1


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``:
    a crash mid-write never leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def architecture_of(model: nn.Module) -> str:
    """The model family a checkpoint records (``model.architecture``: ``"vita"``, ``"vifi"``)."""
    architecture = getattr(model, "architecture", None)
    if not isinstance(architecture, str):
        raise TypeError(f"expected a vita-clip model (VitaCLIP, ViFiCLIP), got {type(model).__name__}")
    return architecture


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in trainable}


def model_description(model: nn.Module) -> dict:
    """What :func:`vita_clip.load_model` needs besides the weights: format, architecture,
    config, the classes the prompts were built for, and the current classes and templates."""
    learner = getattr(model, "prompt_learner", None)
    return {
        "format": FORMAT,
        "version": VERSION,
        "architecture": architecture_of(model),
        "config": config_to_dict(model.config),
        "prompt_classnames": learner.classnames if learner is not None else model.classnames,
        "classnames": model.classnames,
        "templates": list(model.templates) if model.templates is not None else None,
    }


def weights_to_save(model: nn.Module, trainable_only: bool | None = None) -> tuple[dict[str, torch.Tensor], bool]:
    """``(weights, trainable_only)``: ``trainable_only=None`` leaves the frozen weights out only
    when they can be rebuilt, i.e. when the config names pretrained CLIP weights."""
    if trainable_only is None:
        trainable_only = model.config.pretrained is not None
    state = trainable_state_dict(model) if trainable_only else model.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}, trainable_only


def checkpoint_dict(model: nn.Module, trainable_only: bool | None = None) -> dict:
    """The checkpoint of ``model`` as a dict (see the module docstring)."""
    weights, trainable_only = weights_to_save(model, trainable_only)
    return {**model_description(model), "trainable_only": trainable_only, "state_dict": weights}


def save_checkpoint(model: nn.Module, path: str | os.PathLike, trainable_only: bool | None = None) -> None:
    """Write ``model``'s weights, config and classes to ``path`` atomically."""
    atomic_save(checkpoint_dict(model, trainable_only), path)


def covers_backbone(state: dict) -> bool:
    """Whether a state dict holds the frozen CLIP weights too (then no pretrained CLIP is needed)."""
    return "visual.conv1.weight" in state and "text.token_embedding.weight" in state


def load_weights(model: nn.Module, checkpoint: dict) -> None:
    """Load a :func:`read_checkpoint` result into ``model``, naming every key or shape that does
    not fit. A checkpoint may lack only what its kind never holds: the frozen weights
    (trainable-only checkpoints), the token embedding (ViFi-CLIP checkpoints) or the learned
    weights (the original converted CLIP backbone, which only initialises the model)."""
    state, source, kind = checkpoint["state_dict"], checkpoint["source"], checkpoint["kind"]
    missing, unexpected = load_state_dict_checked(model, state, source=source, strict=False)
    if unexpected:
        raise CheckpointMismatchError(f"{source} has keys this {type(model).__name__} lacks "
                                      f"(another prompt configuration?): {unexpected[:8]}")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if checkpoint.get("trainable_only"):
        may_lack = set(missing) - trainable
    elif kind == "original-vifi":
        may_lack = {"text.token_embedding.weight"}
    elif kind == "original-vita" and not (set(state) & trainable) - {"logit_scale"}:
        may_lack = trainable
    else:
        may_lack = set()
    lacking = [k for k in missing if k not in may_lack]
    if lacking:
        raise CheckpointMismatchError(f"{source} lacks {len(lacking)} weights of this {type(model).__name__}: {lacking[:8]}")


# -- state dicts -------------------------------------------------------------------------------

def unwrap_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state dict in a checkpoint object and strip DDP ``module.`` prefixes."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source}: expected a state dict of tensors (optionally under 'state_dict' or 'model')")
    return strip_prefix(dict(obj), "module.")


def strip_prefix(state: dict, prefix: str) -> dict:
    if all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


_SHOW = 8  # keys listed per problem kind; the rest are counted


def load_state_dict_checked(
    module: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint", strict: bool = True
) -> tuple[list[str], list[str]]:
    """``module.load_state_dict`` with one readable error for every mismatch.

    Shape mismatches always raise. With ``strict``, missing and unexpected keys raise too;
    otherwise they are returned as ``(missing, unexpected)``.
    """
    if not state:
        raise CheckpointMismatchError(f"{source}: the state dict is empty")
    expected = module.state_dict()
    problems = []
    shape_errors = [
        f"{k}: model expects {tuple(expected[k].shape)}, {source} has {tuple(v.shape)}"
        for k, v in state.items()
        if k in expected and tuple(expected[k].shape) != tuple(v.shape)
    ]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if shape_errors:
        problems.append(_listing("shape mismatches", shape_errors))
    if strict and missing:
        problems.append(_listing("keys the model needs but the checkpoint lacks", missing))
    if strict and unexpected:
        problems.append(_listing("keys in the checkpoint the model does not have", unexpected))
    if problems:
        raise CheckpointMismatchError(f"{source} does not fit {type(module).__name__}:\n" + "\n".join(problems))
    module.load_state_dict(state, strict=False)
    return missing, unexpected


def _listing(title: str, items: list[str]) -> str:
    shown = "\n".join(f"    {item}" for item in items[:_SHOW])
    more = f"\n    ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"  {title} ({len(items)}):\n{shown}{more}"
