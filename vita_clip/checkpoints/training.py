"""Training checkpoints that lose nothing, written atomically, resumed automatically.

``<output_dir>/checkpoint-<step>/`` holds

* ``model.safetensors``: the trainable tensors (the frozen CLIP comes from the model config's
  pretrained weights), or every tensor when the backbone has no pretrained weights to rebuild it;
* ``state.pt``: optimizer, scheduler and grad-scaler states, every RNG state, the step, the
  run config and what rebuilds the model (architecture, model config, class names). It
  loads with ``torch.load(weights_only=True)``;
* ``checksums.json``: the SHA-256 of both files, written last: a checkpoint whose files do not
  match it is corrupt (:class:`CorruptCheckpoint`), and :func:`latest_intact_checkpoint`
  passes over it to the previous one.

A checkpoint is written into a hidden temporary folder that is renamed into place once
complete, so a run killed at any moment leaves either the previous checkpoints or the new
one, never a half-written one. ``vita_clip.load_model`` reads these folders too
(:mod:`vita_clip.checkpoints.reader`).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointMismatchError
from .io import FORMAT, file_digest, load_weights, model_description, weights_to_save

_NAME = re.compile(r"^checkpoint-(\d+)$")
MODEL_FILE, STATE_FILE, CHECKSUM_FILE = "model.safetensors", "state.pt", "checksums.json"


class CorruptCheckpoint(CheckpointMismatchError):
    """A training checkpoint folder whose files are unreadable or do not match their checksums."""


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": np_state[0], "state": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    return value


def save_training_state(output_dir: str | os.PathLike, step: int, model: nn.Module, optimizer, scheduler,
                        scaler, run_config: dict, keep: int = 2, extra: dict | None = None) -> Path:
    """Write ``checkpoint-<step>`` atomically and keep only the newest ``keep`` checkpoints."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"checkpoint-{step:07d}"
    tmp = output_dir / f".tmp-checkpoint-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights, trainable_only = weights_to_save(model)
    save_file(weights, str(tmp / MODEL_FILE), metadata={"format": FORMAT, "step": str(step)})
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "run_config": run_config,
        "model": {**model_description(model), "trainable_only": trainable_only},
        "extra": extra or {},
    }
    with open(tmp / STATE_FILE, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    sums = {name: file_digest(tmp / name) for name in (MODEL_FILE, STATE_FILE)}
    with open(tmp / CHECKSUM_FILE, "w") as f:
        json.dump(sums, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():  # the same step written again (e.g. the final save after a periodic one)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(output_dir)
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        m = _NAME.match(path.name)
        if m and (path / MODEL_FILE).is_file() and (path / STATE_FILE).is_file():
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def latest_intact_checkpoint(output_dir: str | os.PathLike, report=None) -> tuple[Path, dict, dict] | None:
    """``(path, state, weights)`` of the newest checkpoint that reads back whole, or ``None``.
    Each newer corrupt one is passed to ``report(message)`` and skipped (left on disk)."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            state, weights = read_training_state(path)
        except CheckpointMismatchError as err:
            if report is not None:
                report(f"{err}; trying the previous checkpoint")
            continue
        return path, state, weights
    return None


def verify_checksums(path: Path) -> None:
    """Compare the folder's files with ``checksums.json`` (folders written before it existed pass)."""
    sums_path = path / CHECKSUM_FILE
    if not sums_path.is_file():
        return
    try:
        sums = json.loads(sums_path.read_text())
    except ValueError as err:
        raise CorruptCheckpoint(f"{sums_path}: unreadable ({err})") from None
    for name, expected in sums.items():
        if file_digest(path / name) != expected:
            raise CorruptCheckpoint(f"{path / name}: does not match its checksum (the file is corrupt)")


def read_training_state(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(state, weights)`` of a checkpoint folder, with errors that name the file; a folder
    that is damaged raises :class:`CorruptCheckpoint`."""
    path = Path(path)
    for name in (MODEL_FILE, STATE_FILE):
        if not (path / name).is_file():
            raise CheckpointMismatchError(f"{path}: not a training checkpoint (no {name})")
    verify_checksums(path)
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        weights = load_file(str(path / MODEL_FILE))
    except Exception as err:
        raise CorruptCheckpoint(f"{path}: cannot read the checkpoint: {type(err).__name__}: {err}") from err
    if not weights:
        raise CorruptCheckpoint(f"{path / MODEL_FILE}: holds no tensors")
    return state, weights


def restore_training_state(path: str | os.PathLike, model: nn.Module, optimizer, scheduler, scaler,
                           read: tuple[dict, dict] | None = None) -> int:
    """Load weights and states from a checkpoint folder (``read``: its already read
    ``(state, weights)``); returns the step to continue from. ``scheduler=None`` leaves the
    schedule as built (a forced resume with new optimizer settings)."""
    state, weights = read if read is not None else read_training_state(path)
    load_weights(model, {"kind": "vita-clip", "state_dict": weights, "source": str(path),
                         "trainable_only": state["model"]["trainable_only"]})
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return int(state["step"])
