"""Helpers of the inference / evaluation tests: small real videos and a tiny saved model."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch


def write_video(path: str | Path, seed: int, frames: int = 12, size: int = 32, level: int | None = None) -> Path:
    """A short VP9 clip of a random image sliding sideways (a pure function of ``seed``), or of
    one grey ``level`` throughout."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8) if level is None else \
        np.full((size, size, 3), level, dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            image = np.roll(base, shift=t * 2 * (1 + seed % 3), axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def save_tiny_checkpoint(path: str | Path, classes: list[str], name: str = "vita-clip-tiny", seed: int = 0) -> Path:
    """A tiny random-weight model saved as a vita-clip checkpoint with its classes."""
    from vita_clip import create_model, save_checkpoint

    torch.manual_seed(seed)
    model = create_model(name, classes)
    with torch.no_grad():  # random prompts, so that classes are told apart
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
    save_checkpoint(model, path)
    return Path(path)
