"""What the Triton launchers of both kernel files share."""
from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor


def empty(shape, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every launcher allocation goes through here (the tests swap in a NaN-filled version)."""
    return torch.empty(shape, dtype=dtype, device=device)


def interpreting() -> bool:
    """Whether Triton runs in its interpreter (CPU tensors allowed)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")


def device_of(t: Tensor):
    """Triton launches on the current CUDA device: make it ``t``'s."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()
