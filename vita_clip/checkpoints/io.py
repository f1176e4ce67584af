"""Writing and loading model weights: this package's checkpoint files and checked state-dict loading.

A vita-clip checkpoint is a plain dict (loadable with ``torch.load(weights_only=True)``)::

    {"format": "vita-clip", "version": 1, "architecture": "vita" | "vifi",
     "config": {...}, "backbone_config": {...}, "data": {...} | None,
     "prompt_classnames": [...], "classnames": [...], "templates": [...] | None,
     "trainable_only": bool, "state_dict": {...}, "sha256": "..."}

It describes the function completely: ``config`` with the resolved activation
(``quick_gelu`` true or false, never "follow the tag"), ``backbone_config`` the complete
open_clip config the backbone was built from (no registered name needed), ``data`` the data
recipe (sampling, transforms, test views) the model was trained and evaluated with, and
``sha256`` a digest of the weights, checked on load. With ``trainable_only`` the frozen CLIP
weights are left out: only when they come from an open_clip pretrained tag (30 M instead of
187 M parameters for a Vita-CLIP B/16); weights from a local file travel inside, so the
checkpoint never depends on where that file was. Files are written atomically (temporary
file + rename), readable by all (0644 under the usual umask).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..config_builder import config_to_dict
from ..errors import CheckpointMismatchError

FORMAT = "vita-clip"
VERSION = 1
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def looks_like_path(value: str) -> bool:
    """Whether a ``pretrained`` value names a file (else it is an open_clip tag such as ``openai``)."""
    return os.path.exists(value) or os.sep in value or value.lower().endswith(_WEIGHT_SUFFIXES)


def file_mode() -> int:
    """The mode ``open()`` gives new files under the current umask (``mkstemp`` would give 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: names, dtypes, shapes and bytes, in sorted key order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``:
    a crash mid-write never leaves a truncated checkpoint behind."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write(path: str | os.PathLike, write) -> None:
    """``write(binary_file)`` into a temporary file beside ``path``, synced and renamed over it
    (mode :func:`file_mode`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
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


def uses_quick_gelu(model: nn.Module) -> bool:
    """The activation the model's CLIP MLPs actually compute (both towers share it)."""
    return any(type(m).__name__ == "QuickGELU" for m in model.modules())


def model_description(model: nn.Module) -> dict:
    """What :func:`vita_clip.load_model` needs besides the weights: format, architecture,
    config (with the activation the model computes), the backbone's open_clip config, the
    data recipe (``model.data_config``), the classes the prompts were built for, and the
    current classes and templates."""
    learner = getattr(model, "prompt_learner", None)
    config = config_to_dict(model.config)
    config["quick_gelu"] = uses_quick_gelu(model)
    backbone = getattr(model, "backbone_config", None)
    data = getattr(model, "data_config", None)
    return {
        "format": FORMAT,
        "version": VERSION,
        "architecture": architecture_of(model),
        "config": config,
        "backbone_config": {**backbone, "quick_gelu": config["quick_gelu"]} if backbone is not None else None,
        "data": config_to_dict(data) if data is not None else None,
        "prompt_classnames": learner.classnames if learner is not None else model.classnames,
        "classnames": model.classnames,
        "templates": list(model.templates) if model.templates is not None else None,
    }


def weights_to_save(model: nn.Module, trainable_only: bool | None = None) -> tuple[dict[str, torch.Tensor], bool]:
    """``(weights, trainable_only)``: ``trainable_only=None`` leaves the frozen weights out only
    when they can be rebuilt anywhere, i.e. when the config names an open_clip pretrained tag
    (a local weight file may not exist where the checkpoint is loaded)."""
    if trainable_only is None:
        pretrained = model.config.pretrained
        trainable_only = pretrained is not None and not looks_like_path(pretrained)
    state = trainable_state_dict(model) if trainable_only else model.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}, trainable_only


def checkpoint_dict(model: nn.Module, trainable_only: bool | None = None) -> dict:
    """The checkpoint of ``model`` as a dict (see the module docstring)."""
    weights, trainable_only = weights_to_save(model, trainable_only)
    return {**model_description(model), "trainable_only": trainable_only, "state_dict": weights,
            "sha256": tensors_digest(weights)}


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


# -- the shareable directory form --------------------------------------------------------------

PRETRAINED_WEIGHTS, PRETRAINED_CONFIG = "model.safetensors", "config.json"


def save_pretrained(model: nn.Module, directory: str | os.PathLike, trainable_only: bool | None = None) -> Path:
    """Write ``model`` as a directory others can use (and upload to a Hugging Face Hub repo):
    ``model.safetensors`` (the weights) and ``config.json`` (everything else a checkpoint holds,
    with the weights file's SHA-256). Both files are replaced atomically, readable by all."""
    import json

    from safetensors.torch import save

    directory = Path(directory)
    weights, trainable_only = weights_to_save(model, trainable_only)
    data = save(weights, metadata={"format": FORMAT})
    atomic_write(directory / PRETRAINED_WEIGHTS, lambda f: f.write(data))
    description = {**model_description(model), "trainable_only": trainable_only,
                   "weights_sha256": hashlib.sha256(data).hexdigest()}
    atomic_write(directory / PRETRAINED_CONFIG, lambda f: f.write((json.dumps(description, indent=2) + "\n").encode()))
    return directory
