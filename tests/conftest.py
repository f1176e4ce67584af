"""Shared fixtures: the golden outputs of the original implementation and tiny class lists.
Shared functions live in ``helpers.py``."""
from __future__ import annotations

import os

# Without a GPU the Triton kernels run in Triton's interpreter: the switch must be set before
# triton is first imported (vita_clip imports its kernels, hence triton, at import time).
# Set TRITON_INTERPRET yourself to override.
if "TRITON_INTERPRET" not in os.environ and not os.path.exists("/dev/nvidiactl"):
    os.environ["TRITON_INTERPRET"] = "1"

from pathlib import Path

import pytest
import torch

# Tests never reach a model hub: weights are random or written by the tests themselves.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIXTURES = Path(__file__).parent / "fixtures"
TOKEN_EMBEDDING = "textual.token_embedding.weight"


@pytest.fixture(scope="session")
def golden() -> dict:
    """``golden_tiny.pt`` (see ``fixtures/make_golden_tiny.py``) with the full token embedding
    rebuilt: rows the golden prompts never use are NaN, so using one fails loudly."""
    g = torch.load(FIXTURES / "golden_tiny.pt", weights_only=True)
    rows = g["token_embedding_rows"]
    table = torch.full(rows["shape"], float("nan"))
    table[rows["ids"]] = rows["values"]
    g["state_dict"] = {**g["state_dict"], TOKEN_EMBEDDING: table}
    return g


@pytest.fixture
def tiny_classes() -> list[str]:
    return ["abseiling", "playing guitar", "brush_hair", "riding a bike", "yoga"]


@pytest.fixture
def extension():
    """The C++ CPU kernel's ops; a missing extension fails (skips with VITA_CLIP_ALLOW_NO_EXTENSION=1)."""
    from vita_clip.kernels import _cpu_extension

    if not _cpu_extension.extension_available():
        message = f"the C++ CPU extension is not built or fails to import ({_cpu_extension._load_error})"
        if os.environ.get("VITA_CLIP_ALLOW_NO_EXTENSION") == "1":
            pytest.skip(message)
        pytest.fail(message + "; build it with `make install` or set VITA_CLIP_ALLOW_NO_EXTENSION=1")
    return torch.ops.vita_clip_cpu
