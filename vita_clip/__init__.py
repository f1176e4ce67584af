"""vita-clip: Vita-CLIP and ViFi-CLIP video recognition on frozen open_clip backbones.

Public API::

    import vita_clip
    model = vita_clip.create_model("vita-clip-b16", classnames, pretrained="openai")
    logits = model(video)                    # video: (B, T, 3, H, W), CLIP-normalised
    model.set_classes(["surfing", "juggling"], templates="class_only")   # zero-shot
    vita_clip.save_checkpoint(model, "model.pt"); model = vita_clip.load_model("model.pt")
    vita_clip.save_pretrained(model, "my-model/"); model = vita_clip.from_pretrained("my-model/")

    model, preprocess = vita_clip.create_model_and_transforms("vita-clip-b16", classnames)
    views = vita_clip.load_video("clip.mp4", model)   # (V, T, 3, S, S): the model's test views
    probs = model(views).softmax(-1).mean(0)          # (classes,), averaged over the views
"""
from .checkpoints import read_checkpoint, save_checkpoint, save_pretrained
from .errors import CheckpointMismatchError, PretrainedWeightsUnavailable
from .inference import VideoPreprocess, create_model_and_transforms, load_model_and_transforms, load_video, predict
from .models import (
                     TEMPLATES,
                     TINY_BACKBONES,
                     TextPromptConfig,
                     ViFiCLIP,
                     ViFiCLIPConfig,
                     VitaCLIP,
                     VitaCLIPConfig,
                     count_parameters,
                     create_backbone,
                     create_model,
                     from_pretrained,
                     get_model_config,
                     list_backbones,
                     list_models,
                     load_model,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointMismatchError", "PretrainedWeightsUnavailable", "TEMPLATES", "TINY_BACKBONES",
    "TextPromptConfig", "ViFiCLIP", "ViFiCLIPConfig", "VitaCLIP", "VitaCLIPConfig",
    "count_parameters", "create_backbone", "create_model", "from_pretrained", "get_model_config", "list_backbones",
    "list_models", "load_model", "read_checkpoint", "save_checkpoint",
    "VideoPreprocess", "create_model_and_transforms", "load_model_and_transforms", "load_video", "predict",
    "save_pretrained",
]
