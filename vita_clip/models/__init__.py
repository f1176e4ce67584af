"""The models: Vita-CLIP and ViFi-CLIP on open_clip backbones, their configs and the registry
(:mod:`.registry`) that builds them by name."""
from .backbone import TINY_BACKBONES, create_backbone, list_backbones
from .config import TextPromptConfig, ViFiCLIPConfig, VitaCLIPConfig
from .registry import (
                       FAMILIES,
                       MODELS,
                       ModelFamily,
                       count_parameters,
                       create_model,
                       data_recipe,
                       family_of,
                       from_pretrained,
                       get_model_config,
                       list_models,
                       load_model,
)
from .templates import TEMPLATES
from .vifi import ViFiCLIP
from .vita import VitaCLIP

__all__ = [
    "FAMILIES", "MODELS", "ModelFamily", "TEMPLATES", "TINY_BACKBONES", "TextPromptConfig", "ViFiCLIP",
    "ViFiCLIPConfig", "VitaCLIP", "VitaCLIPConfig", "count_parameters", "create_backbone", "create_model",
    "data_recipe", "family_of", "from_pretrained", "get_model_config", "list_backbones", "list_models", "load_model",
]
