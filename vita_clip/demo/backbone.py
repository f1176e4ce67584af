"""The demo's stand-in for CLIP pretraining: a tiny CLIP pretrained on rendered still frames.

No CLIP weights can be downloaded here, and a frozen *random* ViT passes nothing about where
the shape is to its class token, nor can a random text tower place class features where they
are needed: on such a backbone Vita-CLIP has nothing to learn from (the demo stayed at chance).
:func:`pretrain_demo_backbone` trains a tiny open_clip model (``ViT-Tiny-8`` by default) for a
few minutes on single frames drawn like the demo clips' (:func:`~vita_clip.demo.dataset.random_frame`):

* CLIP's contrastive loss between each frame and a caption generated from the drawn shape
  (``"a small red triangle pointing up at the top left"``), which trains the text tower too;
* two auxiliary regressions that let a ViT trained from scratch learn in minutes rather than
  hours: the shape's attributes from the image embedding, and each patch's coverage by the
  shape from its patch token;
* attention and position embeddings initialised for locality (mimetic initialisation,
  Trockman & Kolter, ICML 2023, and 2-D sine-cosine positions).

Only stills are seen, never a clip, a motion or a class name of the demo: telling "moving
left" from "moving right" is left to Vita-CLIP. The weights are cached beside the demo
dataset (``backbone-<name>-seed<k>-steps<n>.pt``, an open_clip state dict) and reused.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints.io import atomic_save
from ..data.transforms import CLIP_MEAN, CLIP_STD
from ..models.backbone import create_backbone, patch_tokens
from ..models.text import tokenize
from .dataset import Shape, random_frame

DEMO_BACKBONE_VERSION = 1
RENDER_SIZE = 96  # the demo clips' size: frames are cropped and resized to the model's like theirs
COLOR_NAMES = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 230, 30),
               "cyan": (30, 220, 220), "magenta": (220, 30, 220), "white": (240, 240, 240), "black": (20, 20, 20),
               "orange": (240, 140, 20), "purple": (120, 30, 180), "gray": (128, 128, 128), "pink": (240, 150, 180)}
NUM_ATTRIBUTES = 16


def caption(shape: Shape, crop: tuple[float, float, float]) -> str:
    """What a frame shows, in words: ``shape`` seen through the square ``crop`` (left, top, side)."""
    if shape.alpha < 0.25:
        return "an empty background"
    left, top, side = crop
    x, y, r = (shape.x - left) / side, (shape.y - top) / side, shape.radius / side
    names = list(COLOR_NAMES)
    color = names[int(np.argmin(((np.array(list(COLOR_NAMES.values())) - shape.color) ** 2).sum(1)))]
    column = "left" if x < 1 / 3 else "right" if x > 2 / 3 else "center"
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else "middle"
    size = "small" if r < 0.12 else "large" if r > 0.2 else "medium"
    kind = "L shape" if shape.kind == "ell" else shape.kind
    pointing = ""
    if shape.kind in ("triangle", "ell"):
        quadrant = int(((shape.angle + math.pi / 4) % (2 * math.pi)) // (math.pi / 2))
        pointing = " pointing " + ("right", "down", "left", "up")[quadrant]
    faint = "faint " if shape.alpha < 0.7 else ""
    return f"a {faint}{size} {color} {kind}{pointing} at the {row} {column}"


def patch_basis(grid: int) -> torch.Tensor:
    """``(grid * grid, 3)``: ``1, x, y`` of each patch centre (row-major, x and y in [-1, 1]); a
    patch's coverage times these rows is its regression target."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, grid), torch.linspace(-1, 1, grid), indexing="ij")
    return torch.stack([torch.ones(grid * grid), xs.flatten(), ys.flatten()], dim=1)


def attributes(shape: Shape, crop: tuple[float, float, float], coverage: torch.Tensor) -> tuple[list, list]:
    """Regression targets of one frame and which of them are defined (an invisible shape has no
    position; a square's angle is only defined modulo 90 degrees): 16 values each."""
    left, top, side = crop
    visible = shape.alpha > 0.05
    symmetry = {"square": 4, "bar": 2}.get(shape.kind, 1)
    a = shape.angle
    # area and coverage-weighted position: the patch targets' means
    moments = 4 * (coverage.reshape(-1, 1) * patch_basis(coverage.shape[-1])).mean(dim=0)
    targets = [(shape.x - left) / side - 0.5, (shape.y - top) / side - 0.5, shape.radius / side, shape.alpha,
               *(shape.color / 255 - 0.5), math.cos(a), math.sin(a), math.cos(2 * a), math.sin(2 * a),
               math.cos(4 * a), math.sin(4 * a), *moments.tolist()]
    defined = [visible] * 3 + [True] + [visible] * 3 + [visible and symmetry == 1] * 2 + \
              [visible and symmetry <= 2] * 2 + [visible] * 2 + [True] * 3
    return targets, defined


def training_batch(rng: np.random.Generator, n: int, image_size: int, grid: int):
    """``n`` random frames, cropped (area 0.4-1, as the demo's training crops) and resized:
    ``(pixels (n, 3, S, S) CLIP-normalised, captions, attributes (n, 16), defined (n, 16),
    patch coverage (n, grid * grid))``."""
    images, captions, targets, defined, coverages = [], [], [], [], []
    for _ in range(n):
        frame, cover, shape = random_frame(rng, RENDER_SIZE)
        side = int(round(math.sqrt(rng.uniform(0.4, 1.0)) * RENDER_SIZE))
        left, top = (int(v) for v in rng.integers(0, RENDER_SIZE - side + 1, size=2))
        crop = np.concatenate([frame[top:top + side, left:left + side] / 255.0,
                               cover[top:top + side, left:left + side, None]], axis=-1)
        crop = torch.from_numpy(crop).permute(2, 0, 1).float()[None]
        crop = F.interpolate(crop, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)[0]
        coverage = F.adaptive_avg_pool2d(crop[3:], grid)[0]
        t, d = attributes(shape, (left, top, side), coverage)
        images.append(crop[:3])
        captions.append(caption(shape, (left, top, side)))
        targets.append(t)
        defined.append(d)
        coverages.append(coverage.flatten())
    pixels = (torch.stack(images) - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    return (pixels, captions, torch.tensor(targets, dtype=torch.float32), torch.tensor(defined, dtype=torch.float32),
            torch.stack(coverages))


class _FrameBatches(torch.utils.data.IterableDataset):
    """The training batches, batch ``k`` drawn from its own seed ``(seed, k)``."""

    def __init__(self, seed: int, steps: int, batch_size: int, image_size: int, grid: int):
        self.seed, self.steps, self.batch_size, self.image_size, self.grid = seed, steps, batch_size, image_size, grid

    def __iter__(self):
        for step in range(self.steps):
            yield training_batch(np.random.default_rng([self.seed, step]), self.batch_size, self.image_size, self.grid)


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


def init_for_locality(visual: nn.Module, generator: torch.Generator) -> None:
    """Mimetic initialisation: ``W_q W_k^T ~ I`` and ``W_v W_o ~ -I`` in every block, and 2-D
    sine-cosine patch positions, so that attention starts out local like a convolution."""
    width = visual.conv1.out_channels
    grid = visual.grid_size[0]
    with torch.no_grad():
        ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
        freqs = 1.0 / 100 ** (torch.arange(width // 4) / (width // 4))

        def encode(p):
            return torch.cat([torch.sin(p[:, None] * freqs), torch.cos(p[:, None] * freqs)], dim=1)

        positions = torch.cat([encode(ys.flatten().float()), encode(xs.flatten().float())], dim=1)
        visual.positional_embedding.zero_()
        visual.positional_embedding[1:, : positions.shape[1]] = 0.5 * positions
        eye = torch.eye(width)
        for block in visual.transformer.resblocks:
            w = block.attn.in_proj_weight
            u, s, vh = torch.linalg.svd(0.7 * torch.randn(width, width, generator=generator) / width ** 0.5 + 0.7 * eye)
            w[:width] = (u * s.sqrt()).T
            w[width:2 * width] = (vh.T * s.sqrt()).T
            u, s, vh = torch.linalg.svd(0.4 * torch.randn(width, width, generator=generator) / width ** 0.5 - 0.4 * eye)
            w[2 * width:] = (u * s.sqrt()).T
            block.attn.out_proj.weight.copy_(vh.T * s.sqrt())


def pretrain_demo_backbone(out_path: str | os.PathLike, backbone: str = "ViT-Tiny-8", steps: int = 800,
                           batch_size: int = 64, lr: float = 2e-3, seed: int = 0, log=print) -> dict:
    """Pretrain ``backbone`` (random weights) as described above and save its open_clip state
    dict to ``out_path`` (atomically). Returns the final held-out scores."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    clip = create_backbone(backbone, pretrained=None)
    visual = clip.visual
    init_for_locality(visual, generator)
    image_size, grid = visual.image_size[0], visual.grid_size[0]
    attribute_head = nn.Linear(visual.output_dim, NUM_ATTRIBUTES)
    coverage_head = nn.Linear(visual.conv1.out_channels, 3)
    params = [*clip.parameters(), *attribute_head.parameters(), *coverage_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    warmup = max(1, min(20, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * s / steps))))
    basis = patch_basis(grid)

    def forward(pixels):
        tokens = visual.ln_pre(patch_tokens(visual, pixels))
        tokens = visual.transformer(tokens)
        return visual.ln_post(tokens[:, 0]) @ visual.proj, tokens[:, 1:]

    def losses(pixels, captions, targets, defined, coverage):
        image, patches = forward(pixels)
        text = clip.encode_text(tokenize(captions))
        logits = clip.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T
        same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
        soft = same / same.sum(1, keepdim=True)  # equal captions are all positives
        contrastive = -0.5 * ((soft * logits.log_softmax(1)).sum(1).mean() + (soft * logits.log_softmax(0).T).sum(1).mean())
        regression = (((attribute_head(image) - targets) ** 2) * defined).sum() / defined.sum()
        dense = 10 * ((coverage_head(patches) - coverage[..., None] * basis) ** 2).mean()
        return contrastive, regression, dense, image, text

    held_out = training_batch(np.random.default_rng([seed, 1 << 30]), 256, image_size, grid)
    # drawing frames costs about as much as a training step: a worker process draws ahead
    batches = torch.utils.data.DataLoader(_FrameBatches(seed, steps, batch_size, image_size, grid), batch_size=None,
                                          num_workers=1, prefetch_factor=4, worker_init_fn=_one_thread)
    started = time.perf_counter()
    for step, (pixels, captions, targets, defined, coverage) in enumerate(batches):
        contrastive, regression, dense, _, _ = losses(pixels, captions, targets, defined, coverage)
        optimizer.zero_grad(set_to_none=True)
        (contrastive + regression + dense).backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"demo backbone step {step + 1}/{steps} ({time.perf_counter() - started:.0f} s): "
                f"contrastive {contrastive.item():.3f}, attributes {regression.item():.3f}, coverage {dense.item():.3f}")
    scores = evaluate_demo_backbone(clip, held_out, forward)
    if log:
        log(f"demo backbone held-out: caption retrieval top-1 {100 * scores['caption_top1']:.1f}% "
            f"of {scores['captions']} captions, position R^2 {scores['position_r2']:.2f}")
    atomic_save(clip.state_dict(), out_path)
    return scores


@torch.no_grad()
def evaluate_demo_backbone(clip, batch, forward) -> dict:
    """Held-out caption retrieval (each frame against every distinct caption of the batch) and how
    well a least-squares readout of the image embedding finds the shape (R^2 of x and y)."""
    pixels, captions, targets, defined, _ = batch
    image, _ = forward(pixels)
    distinct = sorted(set(captions))
    text = F.normalize(clip.encode_text(tokenize(distinct)), dim=-1)
    best = (F.normalize(image, dim=-1) @ text.T).argmax(1).tolist()
    top1 = float(np.mean([distinct[b] == c for b, c in zip(best, captions)]))
    visible = defined[:, 0] > 0
    features = torch.cat([image[visible], torch.ones(int(visible.sum()), 1)], dim=1)
    half = features.shape[0] // 2
    solution = torch.linalg.lstsq(features[:half], targets[visible][:half, :2]).solution
    residual = ((features[half:] @ solution - targets[visible][half:, :2]) ** 2).mean()
    r2 = 1 - float(residual / targets[visible][half:, :2].var(dim=0).mean())
    return {"caption_top1": top1, "captions": len(distinct), "position_r2": r2}


def demo_backbone(demo_dir: str | os.PathLike, backbone: str = "ViT-Tiny-8", steps: int = 800, seed: int = 0,
                  log=print) -> Path:
    """Path of the pretrained demo backbone in ``demo_dir``: pretrained now unless a file made with
    the same parameters is there already."""
    path = Path(demo_dir) / f"backbone-{backbone}-seed{seed}-steps{steps}.pt"
    manifest = path.with_suffix(".json")
    params = {"version": DEMO_BACKBONE_VERSION, "backbone": backbone, "steps": steps, "seed": seed}
    if path.is_file() and manifest.is_file():
        try:
            if json.loads(manifest.read_text()).get("params") == params:
                return path
        except json.JSONDecodeError:
            pass
    if log:
        log(f"pretraining the demo backbone {backbone} on rendered frames ({steps} steps, a few minutes on a CPU; "
            f"cached as {path})")
    scores = pretrain_demo_backbone(path, backbone, steps=steps, seed=seed, log=log)
    manifest.write_text(json.dumps({"params": params, "held_out": scores}, indent=1))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vita_clip.demo.backbone",
                                     description="Pretrain the demo's tiny CLIP backbone on rendered frames.")
    parser.add_argument("--out", default="data/demo", help="folder of the cached weights (default: %(default)s)")
    parser.add_argument("--backbone", default="ViT-Tiny-8", help="open_clip config (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=800, help="training steps (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(demo_backbone(args.out, args.backbone, args.steps, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
