"""Clip transforms in plain torch: one implementation for every backend and device.

Input: decoded frames, uint8 ``(F, H, W, 3)`` (what every decoder returns), on the CPU or, for
the DALI backend, already on the GPU. Output: float32 ``(views, T, 3, size, size)``, normalised
with CLIP's mean/std unless told otherwise.

Every random choice (crop box, flip, colour ops and their strengths) is drawn once per clip from
the clip's generator, and every op is applied identically to all frames; the colour ops that
depend on image statistics (auto-contrast, equalize, contrast) use statistics of the whole clip,
so that identical input frames always stay identical.

Geometry runs before the colour ops (the original applies RandAugment at full resolution): the
ops are pointwise or local, so this only changes the clip statistics slightly, and it is several
times cheaper.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRAIN_CROPS = ("random_resized", "multi_scale")


@dataclass
class TransformConfig:
    """Spatial and colour processing of a clip.

    Attributes:
        size: output height = width.
        mean, std: per-channel normalisation in [0, 1] units (:data:`CLIP_MEAN`/:data:`CLIP_STD`,
            or :data:`IMAGENET_MEAN`/:data:`IMAGENET_STD` for ViFi-CLIP checkpoints).
        train_crop: ``"random_resized"`` (Vita-CLIP: area ``crop_scale``, aspect ``crop_ratio``)
            or ``"multi_scale"`` (ViFi-CLIP/TSN: short side to ``train_short_side``, a crop of
            side ``scales`` x short side at one of 5 fixed positions, resized to ``size``).
        flip: probability of a horizontal flip of the whole clip.
        rand_augment_ops: RandAugment colour ops per clip (0: off); each is applied with
            probability 0.5 at a magnitude drawn from N(``rand_augment_magnitude``,
            ``rand_augment_std``) on a 0-10 scale (Vita-CLIP: ``rand-m7-n4-mstd0.5``).
        color_jitter: probability of brightness/contrast 0.4, saturation 0.2, hue 0.1 jitter.
        grayscale: probability of converting the clip to grey.
        test_short_side: short side before the test crops (``None``: ``size``).
        num_crops: test crops per temporal view: 1 (centre) or 3 (along the long side).
    """

    size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    train_crop: str = "random_resized"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)
    train_short_side: int = 256
    flip: float = 0.0
    rand_augment_ops: int = 4
    rand_augment_magnitude: float = 7.0
    rand_augment_std: float = 0.5
    color_jitter: float = 0.0
    grayscale: float = 0.0
    test_short_side: int | None = None
    num_crops: int = 1

    def __post_init__(self):
        if self.train_crop not in TRAIN_CROPS:
            raise ValueError(f"train_crop must be one of {TRAIN_CROPS}, got {self.train_crop!r}")
        if self.num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {self.num_crops}")
        if self.test_short_side is not None and self.test_short_side < self.size:
            raise ValueError(f"test_short_side ({self.test_short_side}) must be >= size ({self.size})")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got {self.mean}, {self.std}")
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        self.crop_scale, self.crop_ratio, self.scales = tuple(self.crop_scale), tuple(self.crop_ratio), tuple(self.scales)

    @classmethod
    def vifi_clip(cls, size: int = 224, num_crops: int = 1) -> TransformConfig:
        """ViFi-CLIP's recipe: multi-scale crop, flip, colour jitter, grey, ImageNet mean/std;
        test: short side 256 and a centre crop, or 224 and three crops."""
        return cls(size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD, train_crop="multi_scale",
                   train_short_side=size * 256 // 224, flip=0.5, rand_augment_ops=0, color_jitter=0.8,
                   grayscale=0.2, test_short_side=size * 256 // 224 if num_crops == 1 else size,
                   num_crops=num_crops)


# ----------------------------------------------------------------------------- geometry

def random_resized_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                       rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) covering a random area fraction and aspect ratio (10 tries, then centre)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    aspect = width / height  # fallback: the largest centred crop with an allowed aspect ratio
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def multi_scale_box(height: int, width: int, short_side: int, scales: tuple[float, ...],
                    rng: np.random.Generator) -> tuple[int, int, int, int]:
    """TSN's multi-scale crop, as a box in the *original* frame.

    The frame is (virtually) resized to ``short_side``; crop sides are ``scale x short side``
    with width and height scales at most one step apart; the crop sits at a corner or the
    centre. Computing the box in original pixels lets one resize do both steps.
    """
    k = short_side / min(height, width)
    h_r, w_r = height * k, width * k
    sides = [int(short_side * s) for s in scales]
    pairs = [(sides[i], sides[j]) for i in range(len(sides)) for j in range(len(sides)) if abs(i - j) <= 1]
    crop_h, crop_w = pairs[int(rng.integers(len(pairs)))]
    dy, dx = (h_r - crop_h) / 4, (w_r - crop_w) / 4
    qy, qx = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)][int(rng.integers(5))]
    top, left = round(qy * dy / k), round(qx * dx / k)
    return top, left, min(round(crop_h / k), height - top), min(round(crop_w / k), width - left)


def _to_float(frames_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float32 (F, 3, H, W) in [0, 1]."""
    return frames_u8.permute(0, 3, 1, 2).float().div_(255)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    # antialias: large crops are shrunk a lot (e.g. 340x256 -> 224); without it they alias
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)


def resize_short_side(x: torch.Tensor, short_side: int) -> torch.Tensor:
    """Resize (F, 3, H, W) so that min(H, W) == short_side; the long side is floored as in the original."""
    h, w = x.shape[-2:]
    size = (short_side, w * short_side // h) if h <= w else (h * short_side // w, short_side)
    return _resize(x, size)


def test_crops(x: torch.Tensor, size: int, num_crops: int) -> torch.Tensor:
    """(F, 3, H, W) -> (num_crops, F, 3, size, size): the centre, or three crops along the long side."""
    h, w = x.shape[-2:]
    if min(h, w) < size:
        raise ValueError(f"frames of {h}x{w} are smaller than the crop size {size}")
    top, left = (h - size) // 2, (w - size) // 2
    if num_crops == 1:
        return x[None, :, :, top:top + size, left:left + size]
    margin = max(h, w) - size
    if h > w:
        crops = [x[..., s:s + size, left:left + size] for s in (0, margin // 2, margin)]
    else:
        crops = [x[..., top:top + size, s:s + size] for s in (0, margin // 2, margin)]
    return torch.stack(crops)


# ------------------------------------------------------------------------ colour ops
# All take and return float (T, 3, H, W) in [0, 1]; statistics are over the whole clip.

def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(x: torch.Tensor, other: torch.Tensor | float, factor: float) -> torch.Tensor:
    """other + factor * (x - other): factor 1 keeps x, 0 gives other (PIL ImageEnhance)."""
    return (other + factor * (x - other)).clamp_(0, 1)


def brightness(x, factor):
    return _blend(x, 0.0, factor)


def contrast(x, factor):
    return _blend(x, _gray(x).mean(), factor)


def saturation(x, factor):
    return _blend(x, _gray(x), factor)


def sharpness(x, factor):
    kernel = x.new_tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
    t, c, h, w = x.shape
    smooth = F.conv2d(x.reshape(t * c, 1, h, w), kernel[None, None]).reshape(t, c, h - 2, w - 2)
    blurred = x.clone()
    blurred[..., 1:-1, 1:-1] = smooth  # borders unchanged, as PIL's sharpness does
    return _blend(x, blurred, factor)


def autocontrast(x, _=None):
    lo = x.amin(dim=(0, 2, 3), keepdim=True)
    hi = x.amax(dim=(0, 2, 3), keepdim=True)
    scale = torch.where(hi > lo, 1 / (hi - lo).clamp_min(1e-6), torch.ones_like(hi))
    return torch.where(hi > lo, (x - lo) * scale, x).clamp_(0, 1)


def equalize(x, _=None):
    """Histogram equalisation per channel with one lookup table for the whole clip."""
    levels = (x * 255).round_().long().clamp_(0, 255)
    out = torch.empty_like(x)
    for c in range(3):
        hist = torch.bincount(levels[:, c].flatten(), minlength=256)
        nonzero = hist[hist > 0]
        step = (hist.sum() - nonzero[-1]) // 255
        if step == 0:
            out[:, c] = x[:, c]
            continue
        lut = ((torch.cumsum(hist, 0) - hist + step // 2) // step).clamp_(0, 255)
        out[:, c] = lut[levels[:, c]].float() / 255
    return out


def invert(x, _=None):
    return 1 - x


def posterize(x, bits):
    shift = 8 - int(bits)
    return (((x * 255).round_().long() >> shift) << shift).float() / 255


def solarize(x, threshold):
    return torch.where(x >= threshold, 1 - x, x)


def solarize_add(x, amount):
    return torch.where(x < 0.5, (x + amount).clamp_(0, 1), x)


def hue(x, shift):
    return TF.adjust_hue(x, shift)


def _signed(rng: np.random.Generator, value: float) -> float:
    return value if rng.random() < 0.5 else -value


# name -> (op, argument from magnitude m in [0, 10]); "increasing" variants: larger m, stronger op
RAND_AUGMENT_OPS = {
    "auto_contrast": (autocontrast, lambda m, rng: None),
    "equalize": (equalize, lambda m, rng: None),
    "invert": (invert, lambda m, rng: None),
    "posterize": (posterize, lambda m, rng: 8 - round(4 * m / 10)),
    "solarize": (solarize, lambda m, rng: 1 - m / 10),
    "solarize_add": (solarize_add, lambda m, rng: 110 / 255 * m / 10),
    "color": (saturation, lambda m, rng: 1 + _signed(rng, 0.9 * m / 10)),
    "contrast": (contrast, lambda m, rng: 1 + _signed(rng, 0.9 * m / 10)),
    "brightness": (brightness, lambda m, rng: 1 + _signed(rng, 0.9 * m / 10)),
    "sharpness": (sharpness, lambda m, rng: 1 + _signed(rng, 0.9 * m / 10)),
}


def rand_augment(x: torch.Tensor, config: TransformConfig, rng: np.random.Generator) -> torch.Tensor:
    names = list(RAND_AUGMENT_OPS)
    for _ in range(config.rand_augment_ops):
        op, argument = RAND_AUGMENT_OPS[names[int(rng.integers(len(names)))]]
        if rng.random() >= 0.5:
            continue
        magnitude = float(np.clip(rng.normal(config.rand_augment_magnitude, config.rand_augment_std), 0, 10))
        x = op(x, argument(magnitude, rng))
    return x


def color_jitter(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    jitters = [(brightness, 1 + rng.uniform(-0.4, 0.4)), (contrast, 1 + rng.uniform(-0.4, 0.4)),
               (saturation, 1 + rng.uniform(-0.2, 0.2)), (hue, rng.uniform(-0.1, 0.1))]
    for k in rng.permutation(len(jitters)):
        op, value = jitters[k]
        x = op(x, value)
    return x


# ------------------------------------------------------------------------ pipelines

def normalize(x: torch.Tensor, config: TransformConfig) -> torch.Tensor:
    mean = x.new_tensor(config.mean)[:, None, None]
    std = x.new_tensor(config.std)[:, None, None]
    return (x - mean) / std


def train_transform(frames_u8: torch.Tensor, config: TransformConfig, rng: np.random.Generator) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (T, 3, size, size): random crop, flip, colour, normalise."""
    height, width = frames_u8.shape[1:3]
    if config.train_crop == "random_resized":
        top, left, h, w = random_resized_box(height, width, config.crop_scale, config.crop_ratio, rng)
    else:
        top, left, h, w = multi_scale_box(height, width, config.train_short_side, config.scales, rng)
    x = _resize(_to_float(frames_u8[:, top:top + h, left:left + w]), (config.size, config.size))
    if config.flip > 0 and rng.random() < config.flip:
        x = x.flip(-1)
    if config.rand_augment_ops > 0:
        x = rand_augment(x, config, rng)
    if config.color_jitter > 0 and rng.random() < config.color_jitter:
        x = color_jitter(x, rng)
    if config.grayscale > 0 and rng.random() < config.grayscale:
        x = _gray(x).expand_as(x)
    return normalize(x, config)


def test_transform(frames_u8: torch.Tensor, config: TransformConfig) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float32 (num_crops, T, 3, size, size): resize short side, crop, normalise."""
    x = resize_short_side(_to_float(frames_u8), config.test_short_side or config.size)
    return normalize(test_crops(x, config.size, config.num_crops), config)


def transform_clip(frames_u8: torch.Tensor, num_views: int, config: TransformConfig, train: bool,
                   rng: np.random.Generator | None = None) -> torch.Tensor:
    """Decoded frames of all temporal views, uint8 ``(num_views * T, H, W, 3)``, to the model's
    float32 ``(views, T, 3, size, size)``; at test ``views = num_views * num_crops``, ordered
    temporal-view-major (view ``v * num_crops + c``)."""
    if frames_u8.dtype != torch.uint8 or frames_u8.ndim != 4 or frames_u8.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (F, H, W, 3), got {tuple(frames_u8.shape)} {frames_u8.dtype}")
    t = frames_u8.shape[0] // num_views
    if train:
        if num_views != 1 or rng is None:
            raise ValueError("training transforms take one clip and a random generator")
        return train_transform(frames_u8, config, rng)[None]
    crops = test_transform(frames_u8, config)  # (C, V*T, 3, S, S)
    c = crops.shape[0]
    return crops.reshape(c, num_views, t, *crops.shape[2:]).transpose(0, 1).reshape(num_views * c, t, *crops.shape[2:])
