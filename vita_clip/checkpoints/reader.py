"""One reader for every checkpoint a user may hold: this package's files and training folders,
and the original Vita-CLIP / ViFi-CLIP layouts (converted on the way in)."""
from __future__ import annotations

import os

import torch

from ..errors import CheckpointMismatchError
from .io import FORMAT, VERSION, unwrap_state_dict
from .original import (
    ORIGINAL_SAFE_GLOBALS,
    convert_vifi_state_dict,
    convert_vita_state_dict,
    is_original_vifi_state_dict,
    is_original_vita_state_dict,
    original_training_config,
)
from .training import read_training_state


def read_checkpoint(source) -> dict:
    """Read any supported checkpoint into ``{"kind", "state_dict", ...}``.

    ``kind`` is ``"vita-clip"`` (this package), ``"original-vita"`` or ``"original-vifi"``
    (converted to this package's keys), or ``"state_dict"`` (already in this layout).
    ``source`` is a path (a file, or a training checkpoint folder ``checkpoint-<step>``) or
    an already loaded object. ``"original-vifi"`` results also carry ``"original_config"``:
    the training config the file stores (nested dicts), or ``None``.

    Files are read with ``torch.load(weights_only=True)`` (no code from the file runs); the
    yacs config of original ViFi-CLIP checkpoints is read as plain dicts. A file that pickles
    anything else fails with a message naming it; if you trust such a file, load it yourself
    with ``torch.load(path, map_location="cpu", weights_only=False)`` and pass the object.
    """
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "checkpoint"
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
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
        return {**source, "kind": "vita-clip", "source": name}
    state = unwrap_state_dict(source, name)
    if is_original_vita_state_dict(state):
        return {"kind": "original-vita", "state_dict": convert_vita_state_dict(state), "source": name}
    if is_original_vifi_state_dict(state):
        return {"kind": "original-vifi", "state_dict": convert_vifi_state_dict(state), "source": name,
                "original_config": original_training_config(source)}
    return {"kind": "state_dict", "state_dict": state, "source": name}
