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
            when CUDA is present, else DALI's CPU decoder, which reads VP8/VP9/MJPEG only) or
            ``"auto"`` (DALI when CUDA and DALI are available, else CPU).
    """

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    on_error: str = "skip"
    backend: str = "auto"

    def __post_init__(self):
        check_on_error(self.on_error)
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")


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

    def data_config(self, seed: int, test_views: tuple[int, int] | None = None) -> DataConfig:
        """The :class:`DataConfig` of this section; ``test_views`` = (clips, crops) of evaluation."""
        sampling, transform = self.sampling, self.transform
        if test_views is not None:
            sampling = replace(sampling, num_clips=test_views[0])
            transform = replace(transform, num_crops=test_views[1])
        return DataConfig(sampling=sampling, transform=transform, seed=seed, on_error=self.on_error,
                          backend=self.backend)
