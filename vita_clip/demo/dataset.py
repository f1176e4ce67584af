"""A small, real video dataset generated on the spot: ``python -m vita_clip.demo.dataset``.

Rendered clips of a shape moving or changing over a textured background, encoded as real
video files (VP9 ``.webm``, readable by PyAV and by DALI's CPU decoder; H.264 ``.mp4`` on
request), with ``train.txt`` / ``val.txt`` lists (``path label``) and ``classes.csv``
(``id,name``). Everything is a pure function of the seed and the size parameters.

The ten classes form five pairs; the second class of a pair is the first one played backwards
(same distribution of shapes, colours, positions, sizes), so a single frame, or any set of
frames without their order, carries no information about which of the two it is:
moving left/right, moving up/down, rotating clockwise/counter-clockwise, growing/shrinking,
appearing/disappearing. A model only separates them if it uses temporal order.

The default size (10 classes x 40 clips of 32 frames at 96x96) takes ~20 s on 2 cores. Clips
are 32 frames long: sample them with e.g. ``DemoDataset.sampling`` (8 frames, stride 4).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from ..data.classes import write_class_csv
from ..data.lists import write_video_list
from ..data.sampling import SamplingConfig

DEMO_FORMAT_VERSION = 1
DEMO_CLASSES = (
    "moving left", "moving right",
    "moving up", "moving down",
    "rotating clockwise", "rotating counter-clockwise",
    "growing", "shrinking",
    "appearing", "disappearing",
)
CODECS = {  # name -> (PyAV encoder, file extension, pixel format, encoder options)
    "vp9": ("libvpx-vp9", ".webm", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "b": "0"}),
    "h264": ("libx264", ".mp4", "yuv420p", {"preset": "veryfast"}),
    "mjpeg": ("mjpeg", ".avi", "yuvj420p", {}),
}


# ------------------------------------------------------------------------ encoding

def write_video(path: str | os.PathLike, frames, fps: int = 25, codec: str = "vp9",
                 crf: int = 20, gop: int | None = None, options: dict[str, str] | None = None) -> Path:
    """Encode RGB uint8 frames ``(N, H, W, 3)`` (even H and W) into a video file.

    ``codec``: ``"vp9"``, ``"h264"`` or ``"mjpeg"``; ``crf`` sets the quality of VP9/H.264
    (lower is better); ``gop`` the maximal keyframe interval (encoder default if ``None``);
    ``options`` more FFmpeg encoder options (e.g. ``{"x264-params": "b-adapt=0"}`` to force
    B-frames). One encoder thread and a bit-exact container, so that the bytes are reproducible.
    """
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
    encoder, _, pix_fmt, defaults = CODECS[codec]
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (N, H, W, 3), got {frames.shape} {frames.dtype}")
    options = {**defaults, **({"crf": str(crf)} if codec != "mjpeg" else {}), **(options or {})}
    path = Path(path)
    # bitexact: no random IDs or dates in the container, so equal frames give equal files
    with av.open(str(path), mode="w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(encoder, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.codec_context.thread_count = 1
        if gop is not None:
            stream.codec_context.gop_size = gop
        stream.options = options
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


# ------------------------------------------------------------------------ index pattern

PATTERN_GRID = 4  # cells per side; the first 12 cells hold the frame index in binary


def index_pattern_frames(num_frames: int, height: int = 64, width: int = 64) -> np.ndarray:
    """Frames whose pixels say which frame they are: uint8 ``(num_frames, height, width, 3)``.

    The frame is a 4x4 grid of cells; cell ``b`` (row-major, ``b < 12``) is bright when bit
    ``b`` of the frame index is set, dark otherwise; every cell also gets a colour tint that
    changes from frame to frame. :func:`read_index_pattern` reads the indices back, robust to
    codec rounding, to check that a decoder returns the frames it was asked for.
    """
    if num_frames > 1 << 12 or height < 4 * PATTERN_GRID or width < 4 * PATTERN_GRID:
        raise ValueError("at most 4096 frames and at least 16x16 pixels")
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    rows = np.minimum(np.arange(height) * PATTERN_GRID // height, PATTERN_GRID - 1)
    cols = np.minimum(np.arange(width) * PATTERN_GRID // width, PATTERN_GRID - 1)
    cell = rows[:, None] * PATTERN_GRID + cols[None, :]
    for i in range(num_frames):
        bright = ((i >> np.minimum(cell, 11)) & 1).astype(bool) & (cell < 12)
        level = np.where(bright, 200.0, 50.0)[..., None]
        tint = 30 * np.array([np.sin(0.7 * i), np.cos(0.5 * i), -np.sin(0.3 * i)])
        frames[i] = np.clip(level + tint, 0, 255).round().astype(np.uint8)
    return frames


def read_index_pattern(frames: np.ndarray) -> np.ndarray:
    """Frame indices encoded by :func:`index_pattern_frames` in uint8 frames ``(N, H, W, 3)``."""
    frames = np.asarray(frames)
    n, height, width = frames.shape[:3]
    gray = frames.astype(np.float32).mean(axis=-1)
    indices = np.zeros(n, dtype=np.int64)
    for b in range(12):
        r, c = divmod(b, PATTERN_GRID)
        # the middle half of the cell: away from edges blurred by chroma subsampling and resizing
        y0, y1 = (4 * r + 1) * height // 16, (4 * r + 3) * height // 16
        x0, x1 = (4 * c + 1) * width // 16, (4 * c + 3) * width // 16
        bit = gray[:, y0:y1, x0:x1].mean(axis=(1, 2)) > 125
        indices |= bit.astype(np.int64) << b
    return indices


# ------------------------------------------------------------------------ rendering

def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour field + an oriented grating + fixed fine noise, float (size, size, 3) in [0, 255]."""
    coarse = rng.uniform(40, 200, size=(4, 4, 3))
    grid = np.linspace(0, 3, size)
    i0 = np.minimum(grid.astype(int), 2)
    f = (grid - i0)[:, None]
    rows = coarse[i0] * (1 - f[..., None]) + coarse[i0 + 1] * f[..., None]          # (size, 4, 3)
    field = rows[:, i0] * (1 - f.T[..., None]) + rows[:, i0 + 1] * f.T[..., None]   # (size, size, 3)
    y, x = np.mgrid[0:size, 0:size] / size
    angle, freq = rng.uniform(0, np.pi), rng.uniform(3, 9)
    grating = np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
    field += rng.uniform(10, 30) * grating[..., None]
    field += rng.normal(0, 6, size=(size, size, 1))
    return np.clip(field, 0, 255)


def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in shape coordinates (unit size); none of the shapes looks the same rotated by
    less than 90 degrees, and the triangle and the L not even then."""
    if kind == "square":
        return (np.abs(u) < 0.8) & (np.abs(v) < 0.8)
    if kind == "triangle":
        return (v > -0.7) & (v < 1.4 * u + 0.9) & (v < -1.4 * u + 0.9)
    if kind == "ell":
        return ((np.abs(u + 0.4) < 0.35) & (np.abs(v) < 0.9)) | ((np.abs(u) < 0.75) & (np.abs(v - 0.6) < 0.3))
    return (np.abs(u) < 1.0) & (np.abs(v) < 0.35)  # bar


@dataclass(frozen=True)
class _ClipJob:
    path: str
    label: int
    seed: tuple[int, ...]
    size: int
    num_frames: int
    fps: int
    codec: str


def render_clip(label: int, rng: np.random.Generator, size: int, num_frames: int) -> np.ndarray:
    """Frames (num_frames, size, size, 3) uint8 of one clip of class ``label``."""
    pair, backwards = divmod(label, 2)
    background = _background(rng, size)
    color = rng.uniform(0, 255, size=3)
    color[rng.integers(3)] = rng.choice([20.0, 235.0])  # a saturated colour stands out of the texture
    kind = str(rng.choice(SHAPE_KINDS))
    radius = rng.uniform(0.12, 0.18) * size
    cx, cy = rng.uniform(0.35, 0.65, size=2) * size
    angle0 = rng.uniform(0, 2 * np.pi)
    travel = rng.uniform(0.25, 0.45) * size
    turn = rng.uniform(0.5, 1.0) * np.pi
    growth = rng.uniform(2.0, 3.0)
    fade_start, fade_length = rng.uniform(0.1, 0.5), rng.uniform(0.2, 0.4)
    drift = rng.normal(0, 0.03 * size, size=2)  # a little motion in every class

    noise = rng.normal(0, 2, size=(num_frames, size, size, 1))  # sensor noise, part of the scene

    clip = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for k in range(num_frames):
        # the pair's second class shows the first one's scene backwards, noise included
        step = num_frames - 1 - k if backwards else k
        t = step / max(num_frames - 1, 1)
        x, y, a, r, alpha = cx + drift[0] * t, cy + drift[1] * t, angle0, radius, 1.0
        if pair == 0:
            x += travel * (0.5 - t)          # moving left (forwards)
        elif pair == 1:
            y += travel * (0.5 - t)          # moving up (forwards)
        elif pair == 2:
            a += turn * t                    # clockwise on screen (y axis points down)
        elif pair == 3:
            r *= growth ** (t - 0.5) / 1.3   # growing
        else:
            alpha = np.clip((t - fade_start) / fade_length, 0, 1)  # appearing
        clip[k], _ = draw_shape(background, noise[step], Shape(kind, x, y, r, a, float(alpha), color))
    return clip


@dataclass(frozen=True)
class Shape:
    """One frame's shape: kind, centre (pixels), radius (pixels), angle (radians), opacity, RGB colour."""

    kind: str
    x: float
    y: float
    radius: float
    angle: float
    alpha: float
    color: np.ndarray


def draw_shape(background: np.ndarray, noise: np.ndarray, shape: Shape) -> tuple[np.ndarray, np.ndarray]:
    """Frame uint8 (size, size, 3) of ``shape`` over ``background``, and its coverage (size, size) in [0, 1]."""
    size = background.shape[0]
    # anti-aliasing: render at 2x and average 2x2 blocks
    ys, xs = (np.mgrid[0:2 * size, 0:2 * size] + 0.5) / 2
    du, dv = (xs - shape.x) / shape.radius, (ys - shape.y) / shape.radius
    u = du * math.cos(shape.angle) + dv * math.sin(shape.angle)
    v = -du * math.sin(shape.angle) + dv * math.cos(shape.angle)
    cover = _shape_mask(shape.kind, u, v).astype(np.float32).reshape(size, 2, size, 2).mean(axis=(1, 3)) * shape.alpha
    frame = background * (1 - cover[..., None]) + shape.color * cover[..., None] + noise
    return np.clip(frame, 0, 255).round().astype(np.uint8), cover


SHAPE_KINDS = ("square", "triangle", "ell", "bar")


def random_frame(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, Shape]:
    """One still frame like those of the demo clips (any position, size, angle, opacity), for
    pretraining a backbone: ``(frame uint8 (size, size, 3), coverage (size, size), shape)``."""
    background = _background(rng, size)
    color = rng.uniform(0, 255, size=3)
    color[rng.integers(3)] = rng.choice([20.0, 235.0])
    shape = Shape(kind=str(rng.choice(SHAPE_KINDS)), x=float(rng.uniform(0.1, 0.9) * size),
                  y=float(rng.uniform(0.1, 0.9) * size), radius=float(rng.uniform(0.08, 0.24) * size),
                  angle=float(rng.uniform(0, 2 * np.pi)), alpha=float(np.clip(rng.uniform(-0.3, 1.5), 0, 1)),
                  color=color)
    frame, cover = draw_shape(background, rng.normal(0, 2, size=(size, size, 1)), shape)
    return frame, cover, shape


def _make_clip(job: _ClipJob) -> str:
    rng = np.random.default_rng(np.random.SeedSequence(job.seed))
    frames = render_clip(job.label, rng, job.size, job.num_frames)
    write_video(job.path, frames, fps=job.fps, codec=job.codec, crf=24)
    return job.path


# ------------------------------------------------------------------------ the dataset

@dataclass(frozen=True)
class DemoDataset:
    """Where a generated demo dataset lies. ``root`` is the ``data_root`` of both lists."""

    root: Path
    train_list: Path
    val_list: Path
    class_file: Path
    classes: tuple[str, ...]
    num_frames: int

    @property
    def sampling(self) -> SamplingConfig:
        """Dense 8-frame sampling that fits the clips (Vita-CLIP's stride 16 would not)."""
        return SamplingConfig(num_frames=8, mode="dense", stride=max(1, (self.num_frames - 1) // 7))


def make_demo_dataset(out_dir: str | os.PathLike = "data/demo", seed: int = 0, train_per_class: int = 32,
                      val_per_class: int = 8, size: int = 96, num_frames: int = 32, fps: int = 25,
                      codec: str = "vp9", workers: int | None = None, overwrite: bool = False,
                      verbose: bool = False) -> DemoDataset:
    """Generate the demo dataset under ``out_dir`` (or reuse it if already generated with the same
    parameters) and return its paths.

    ``codec``: ``"vp9"`` (default; DALI's CPU backend reads it) or ``"h264"``. ``workers``:
    processes for rendering and encoding (default: the CPU count). ``overwrite`` regenerates even
    when an identical dataset exists.
    """
    if codec not in ("vp9", "h264"):
        raise ValueError(f"codec must be 'vp9' or 'h264', got {codec!r}")
    if size % 2 or size < 16 or num_frames < 2 or train_per_class < 1 or val_per_class < 0:
        raise ValueError("need an even size >= 16, num_frames >= 2, train_per_class >= 1, val_per_class >= 0")
    root = Path(out_dir)
    params = dict(version=DEMO_FORMAT_VERSION, seed=seed, train_per_class=train_per_class,
                  val_per_class=val_per_class, size=size, num_frames=num_frames, fps=fps, codec=codec,
                  classes=list(DEMO_CLASSES))
    result = DemoDataset(root=root, train_list=root / "train.txt", val_list=root / "val.txt",
                         class_file=root / "classes.csv", classes=DEMO_CLASSES, num_frames=num_frames)
    manifest = root / "demo.json"

    jobs: list[_ClipJob] = []
    lists: dict[str, list[tuple[str, int]]] = {"train": [], "val": []}
    extension = CODECS[codec][1]
    for label, name in enumerate(DEMO_CLASSES):
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            for k in range(count):
                relative = f"videos/{name.replace(' ', '_')}/{split}_{k:04d}{extension}"
                lists[split].append((relative, label))
                jobs.append(_ClipJob(str(root / relative), label, (seed, label, split == "val", k),
                                     size, num_frames, fps, codec))

    if not overwrite and manifest.is_file():
        try:
            previous = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            previous = None
        if previous == params and all(os.path.isfile(job.path) for job in jobs):
            if verbose:
                print(f"demo dataset already in {root} (same parameters): nothing to do")
            return result
    if manifest.is_file() and (root / "videos").is_dir():
        shutil.rmtree(root / "videos")  # ours (the manifest says so): drop clips of other parameters
    manifest.unlink(missing_ok=True)
    for job in jobs:
        Path(job.path).parent.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        for job in jobs:
            _make_clip(job)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_make_clip, jobs, chunksize=8))
    write_video_list(result.train_list, lists["train"])
    write_video_list(result.val_list, lists["val"])
    write_class_csv(result.class_file, list(DEMO_CLASSES))
    manifest.write_text(json.dumps(params, indent=1))  # last: marks the dataset complete
    if verbose:
        print(f"wrote {len(jobs)} clips ({len(DEMO_CLASSES)} classes, {size}x{size}, {num_frames} frames, "
              f"{codec}) to {root} in {time.perf_counter() - started:.1f} s")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vita_clip.demo.dataset",
        description="Generate the demo video dataset: 10 classes of moving/changing shapes over "
                    "textured backgrounds, 5 pairs that differ only by temporal order. Writes "
                    "videos/, train.txt, val.txt (path label), classes.csv (id,name). Reuses an "
                    "existing dataset generated with the same parameters.")
    parser.add_argument("--out", default="data/demo", help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--train-per-class", type=int, default=32, help="training clips per class (default: %(default)s)")
    parser.add_argument("--val-per-class", type=int, default=8, help="validation clips per class (default: %(default)s)")
    parser.add_argument("--size", type=int, default=96, help="frame height and width in pixels, even (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=32, help="frames per clip (default: %(default)s)")
    parser.add_argument("--fps", type=int, default=25, help="frame rate (default: %(default)s)")
    parser.add_argument("--codec", choices=("vp9", "h264"), default="vp9", help="video codec (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if an identical dataset exists")
    args = parser.parse_args(argv)
    try:
        demo = make_demo_dataset(args.out, seed=args.seed, train_per_class=args.train_per_class,
                                 val_per_class=args.val_per_class, size=args.size, num_frames=args.frames,
                                 fps=args.fps, codec=args.codec, workers=args.workers,
                                 overwrite=args.overwrite, verbose=True)
    except ValueError as e:
        parser.error(str(e))
    print(f"train list: {demo.train_list}\nval list:   {demo.val_list}\nclasses:    {demo.class_file}\n"
          f"data root:  {demo.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
