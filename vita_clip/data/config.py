"""Data configs: how clips are made from videos, and the data section of a run config.

:class:`DataConfig` is everything that turns list lines into model inputs (sampling,
transforms, seed, error policy, decoding backend); :class:`DataSection` is the ``data:``
section of a training run (:mod:`vita_clip.engine.config`): where the videos and lists are,
plus the same recipe fields, declared once in :class:`ClipRecipe`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from .errors import check_on_error
from .sampling import SamplingConfig
from .transforms import TransformConfig

BACKENDS = ("auto", "cpu", "dali")


@dataclass
class ClipRecipe:
    """The fields a data config and a run's data section share.

    Attributes:
        sampling: which frames (default: Vita-CLIP's 8 frames at stride 16).
        transform: crops, augmentation, normalisation (default: Vita-CLIP's).
        on_error: ``"skip"`` (default: leave bad videos out and report them) or ``"raise"``.
        backend: ``"cpu"`` (PyAV in DataLoader workers), ``"dali"`` (NVIDIA DALI; GPU decoding
            when CUDA is present, else DALI's CPU decoder, which reads VP8/VP9/MJPEG only; videos
            DALI cannot read go to the CPU decoder) or ``"auto"`` (DALI when CUDA, DALI and NVDEC
            are usable, else CPU).
    """

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    on_error: str = "skip"
    backend: str = "auto"

    def __post_init__(self):
        check_on_error(self.on_error)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        problems = recipe_problems(self.sampling, self.transform)
        if problems:
            raise ValueError("; ".join(problems))


def recipe_problems(sampling: SamplingConfig, transform: TransformConfig) -> list[str]:
    """Every value of a recipe outside its range, as ``key: expected ..., got ...`` (the
    sampling and transform configs check their choices; this checks the numbers)."""
    problems = []
    t = transform

    def check(key: str, ok: bool, expected: str, value) -> None:
        if not ok:
            problems.append(f"{key}: expected {expected}, got {value!r}")

    check("transform.size", t.size >= 1, "a positive integer", t.size)
    check("transform.train_short_side", t.train_short_side >= t.size, f">= transform.size ({t.size})", t.train_short_side)
    lo, hi = t.crop_scale if len(t.crop_scale) == 2 else (1, 0)  # (1, 0): fails the check below
    check("transform.crop_scale", 0 < lo <= hi <= 1, "[min, max] with 0 < min <= max <= 1",
          list(t.crop_scale))
    lo, hi = t.crop_ratio if len(t.crop_ratio) == 2 else (1, 0)
    check("transform.crop_ratio", 0 < lo <= hi, "[min, max] with 0 < min <= max",
          list(t.crop_ratio))
    check("transform.scales", bool(t.scales) and all(0 < x <= 1 for x in t.scales), "values in (0, 1]", list(t.scales))
    for name in ("flip", "color_jitter", "grayscale"):
        value = getattr(t, name)
        check(f"transform.{name}", 0 <= value <= 1, "a probability in [0, 1]", value)
    check("transform.rand_augment_ops", t.rand_augment_ops >= 0, ">= 0", t.rand_augment_ops)
    check("transform.rand_augment_magnitude", 0 <= t.rand_augment_magnitude <= 10, "0..10", t.rand_augment_magnitude)
    check("transform.rand_augment_std", t.rand_augment_std >= 0, ">= 0", t.rand_augment_std)
    check("transform.mean", all(0 <= x <= 1 for x in t.mean), "3 values in [0, 1] (pixel units / 255)", list(t.mean))
    return problems


@dataclass
class DataConfig(ClipRecipe):
    """Everything about turning list lines into model inputs: the :class:`ClipRecipe` fields and

    Attributes:
        seed: base of every random choice (with the epoch and the sample index).
        decode_threads: FFmpeg threads per video for the CPU backend (1 suits DataLoader workers).
    """

    seed: int = 0
    decode_threads: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    @classmethod
    def vita_clip(cls, num_frames: int = 8, stride: int = 16, num_clips: int = 3, num_crops: int = 1,
                  size: int = 224, **kwargs) -> DataConfig:
        """Vita-CLIP's recipe: dense sampling, RandAugment + random-resized crop, no flip, CLIP
        mean/std; test: ``num_clips`` x ``num_crops`` views (the original evaluates 3 x 1)."""
        return cls(sampling=SamplingConfig(num_frames=num_frames, mode="dense", stride=stride, num_clips=num_clips),
                   transform=TransformConfig(size=size, num_crops=num_crops), **kwargs)

    @classmethod
    def vifi_clip(cls, num_frames: int = 16, num_clips: int = 1, num_crops: int = 1, size: int = 224,
                  **kwargs) -> DataConfig:
        """ViFi-CLIP's recipe: TSN segment sampling, multi-scale crop, flip, colour jitter,
        ImageNet mean/std; test: segment centres, short side 256 and a centre crop (1 view)."""
        return cls(sampling=SamplingConfig(num_frames=num_frames, mode="segment", num_clips=num_clips),
                   transform=TransformConfig.vifi_clip(size=size, num_crops=num_crops), **kwargs)


@dataclass
class DataSection(ClipRecipe):
    """The ``data:`` section of a run: where the videos are, and the :class:`ClipRecipe` fields.

    ``train_list`` / ``val_list``: ``path label`` or ``path,label`` lines; relative paths are
    joined onto ``data_root``. ``classes``: a class file (``id,name`` CSV, JSON list or one
    name per line) or the name of a shipped label file (e.g. ``k400``). ``demo``: when no
    lists are given, generate and use the demo dataset. ``max_empty_steps``: a training run
    stops with an error after this many consecutive steps without one readable video (0: never).
    """

    train_list: str | None = None
    val_list: str | None = None
    data_root: str = ""
    classes: str | None = None
    num_workers: int = 2
    max_empty_steps: int = 10
    demo: bool = False
    demo_dir: str = "data/demo"

    def __post_init__(self):
        super().__post_init__()
        problems = []
        if self.num_workers < 0:
            problems.append(f"num_workers: expected >= 0, got {self.num_workers}")
        for name in ("train_list", "val_list", "classes"):
            if getattr(self, name) is not None and not getattr(self, name).strip():
                problems.append(f"{name}: expected a file or a shipped name, got an empty string")
        if self.demo and not self.demo_dir.strip():
            problems.append("demo_dir: expected a folder for the generated demo data, got an empty string")
        if problems:
            raise ValueError("; ".join(problems))

    def data_config(self, seed: int, test_views: tuple[int, int] | None = None) -> DataConfig:
        """The :class:`DataConfig` of this section; ``test_views`` = (clips, crops) of evaluation."""
        sampling, transform = self.sampling, self.transform
        if test_views is not None:
            sampling = replace(sampling, num_clips=test_views[0])
            transform = replace(transform, num_crops=test_views[1])
        return DataConfig(sampling=sampling, transform=transform, seed=seed, on_error=self.on_error,
                          backend=self.backend)
