"""One reader for every checkpoint a user may hold: this package's files and training folders,
and the original Vita-CLIP / ViFi-CLIP layouts (converted on the way in)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from ..errors import CheckpointMismatchError
from .io import FORMAT, PRETRAINED_CONFIG, PRETRAINED_WEIGHTS, VERSION, file_digest, tensors_digest, unwrap_state_dict
from .original import (
    ORIGINAL_SAFE_GLOBALS,
    convert_vifi_state_dict,
    convert_vita_state_dict,
    is_original_vifi_state_dict,
    is_original_vita_state_dict,
    original_training_config,
)
from .training import read_training_state

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_checkpoint(source) -> dict:
    """Read any supported checkpoint into ``{"kind", "state_dict", ...}``.

    ``kind`` is ``"vita-clip"`` (this package), ``"original-vita"`` or ``"original-vifi"``
    (converted to this package's keys), or ``"state_dict"`` (already in this layout).
    ``source`` is a path (a file, a training checkpoint folder ``checkpoint-<step>``, a
    :func:`~vita_clip.checkpoints.io.save_pretrained` folder), a Hugging Face Hub repo id
    holding such a folder (``owner/name``, fetched through ``huggingface_hub`` when it is not a
    local path), or an already loaded object. Weights carrying a SHA-256 are checked against it.
    ``"original-vifi"`` results also carry ``"original_config"``: the training config the file
    stores (nested dicts), or ``None``.

    Files are read with ``torch.load(weights_only=True)`` (no code from the file runs); the
    yacs config of original ViFi-CLIP checkpoints is read as plain dicts. A file that pickles
    anything else fails with a message naming it; if you trust such a file, load it yourself
    with ``torch.load(path, map_location="cpu", weights_only=False)`` and pass the object.
    """
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "checkpoint"
    if isinstance(source, str) and not os.path.exists(source) and _REPO_ID.match(source):
        source = _from_hub(source)
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        if (Path(source) / PRETRAINED_CONFIG).is_file():
            return read_pretrained(source)
        state, weights = read_training_state(source)
        return {**state["model"], "kind": "vita-clip", "state_dict": weights, "source": name}
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"checkpoint file {name!r} does not exist")
        try:
            with torch.serialization.safe_globals(ORIGINAL_SAFE_GLOBALS):
                source = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as err:
            detail = str(err).split("WeightsUnpickler error:")[-1].strip()
            raise CheckpointMismatchError(
                f"cannot read checkpoint {name!r} with torch.load(weights_only=True): {type(err).__name__}: {detail}\n"
                f"If you trust the file, load it with torch.load({name!r}, map_location='cpu', weights_only=False) "
                "and pass the loaded object as checkpoint=") from err
    if isinstance(source, dict) and source.get("format") == FORMAT:
        if source.get("version") != VERSION:
            raise CheckpointMismatchError(f"{name}: vita-clip checkpoint version {source.get('version')} is not supported "
                                          f"(expected {VERSION})")
        expected = source.get("sha256")
        if expected is not None and tensors_digest(source["state_dict"]) != expected:
            raise CheckpointMismatchError(f"{name}: the weights do not match the checksum stored with them "
                                          "(the file is corrupt)")
        return {**source, "kind": "vita-clip", "source": name}
    state = unwrap_state_dict(source, name)
    if is_original_vita_state_dict(state):
        return {"kind": "original-vita", "state_dict": convert_vita_state_dict(state), "source": name}
    if is_original_vifi_state_dict(state):
        return {"kind": "original-vifi", "state_dict": convert_vifi_state_dict(state), "source": name,
                "original_config": original_training_config(source)}
    return {"kind": "state_dict", "state_dict": state, "source": name}


def read_pretrained(directory: str | os.PathLike) -> dict:
    """A :func:`~vita_clip.checkpoints.io.save_pretrained` folder as a :func:`read_checkpoint` result."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights_path = directory / PRETRAINED_CONFIG, directory / PRETRAINED_WEIGHTS
    try:
        description = json.loads(config_path.read_text())
    except ValueError as err:
        raise CheckpointMismatchError(f"{config_path}: not valid JSON: {err}") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise CheckpointMismatchError(f"{config_path}: not a vita-clip model config (no \"format\": \"{FORMAT}\")")
    if description.get("version") != VERSION:
        raise CheckpointMismatchError(f"{config_path}: vita-clip version {description.get('version')} is not supported "
                                      f"(expected {VERSION})")
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} does not exist (a model folder holds {PRETRAINED_CONFIG} and "
                                f"{PRETRAINED_WEIGHTS})")
    expected = description.get("weights_sha256")
    if expected is not None and file_digest(weights_path) != expected:
        raise CheckpointMismatchError(f"{weights_path}: does not match the checksum in {PRETRAINED_CONFIG} "
                                      "(the file is corrupt or from another model)")
    try:
        weights = load_file(str(weights_path))
    except Exception as err:
        raise CheckpointMismatchError(f"cannot read {weights_path}: {type(err).__name__}: {err}") from err
    return {**description, "kind": "vita-clip", "state_dict": weights, "source": str(directory)}


def _from_hub(repo_id: str) -> str:
    """The local folder of a Hugging Face Hub model repo (cached, or downloaded when online)."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, allow_patterns=[PRETRAINED_CONFIG, PRETRAINED_WEIGHTS])
    except Exception as err:  # offline, unknown repo, no access: all mean "not available here"
        raise FileNotFoundError(f"checkpoint {repo_id!r} is neither a local path nor a Hugging Face Hub model repo "
                                f"that could be fetched ({type(err).__name__}: {str(err).splitlines()[0]})") from None
