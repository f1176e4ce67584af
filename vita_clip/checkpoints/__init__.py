"""Checkpoints: this package's model files (:mod:`.io`), training folders that resume exactly
(:mod:`.training`), converters of the original Vita-CLIP / ViFi-CLIP layouts (:mod:`.original`)
and the one reader of all of them (:mod:`.reader`)."""
from .io import atomic_save, load_state_dict_checked, load_weights, save_checkpoint, save_pretrained
from .reader import read_checkpoint

__all__ = ["atomic_save", "load_state_dict_checked", "load_weights", "read_checkpoint", "save_checkpoint",
           "save_pretrained"]
