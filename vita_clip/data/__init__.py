"""The video data pipeline: lists, sampling, decoding (PyAV or DALI), transforms, a demo dataset.

Typical use::

    from vita_clip.data import DataConfig, VideoDataset, VideoLoader, protocols

    config = DataConfig.vita_clip()                    # or DataConfig.vifi_clip(num_frames=16)
    train = VideoDataset("k400/train.txt", data_root="/data/k400", classes=protocols.class_names("k400"),
                         train=True, config=config)
    loader = VideoLoader(train, batch_size=32, num_workers=8)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:                           # batch["video"]: (B, T, 3, 224, 224)
            ...
        print(loader.report())                         # the videos that were skipped, and why

``python -m vita_clip.demo.dataset`` generates a small real video dataset to try all of it.
"""
from . import protocols
from .batching import collate_clips
from .classes import read_class_names
from .config import DataConfig, DataSection
from .dataset import VideoDataset, load_clip
from .decode_cpu import VideoReader, read_frames
from .errors import SkippedSample, VideoDataError
from .lists import VideoEntry, read_video_list
from .loader import VideoLoader
from .sampling import SamplingConfig, sample_frame_indices
from .transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, TransformConfig

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "DataConfig", "DataSection", "IMAGENET_MEAN", "IMAGENET_STD", "SamplingConfig",
    "SkippedSample", "TransformConfig", "VideoDataError", "VideoDataset", "VideoEntry", "VideoLoader",
    "VideoReader", "collate_clips", "load_clip", "protocols", "read_class_names", "read_frames", "read_video_list",
    "sample_frame_indices",
]
