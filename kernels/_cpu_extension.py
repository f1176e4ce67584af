"""The C++ CPU kernel of the prompt attention (``csrc/``): loader and backend switch.

The extension ``vita_clip.kernels._prompt_attention_cpu`` is built by ``setup.py`` when torch
and a C++ compiler are there at install time; importing it registers
``torch.ops.vita_clip_cpu.prompt_attention_fwd/_bwd``. Which implementation the CPU kernel of
``vita_clip::prompt_attention`` runs is one switch:

* ``set_cpu_backend("cpp" | "composite")``, or before the first call the environment variable
  ``VITA_CLIP_CPU_KERNEL`` (``set_cpu_backend`` wins);
* default ``"cpp"`` (faster than the composite at ViT-B/16 shapes, see ``csrc/README.md``);
* ``"cpp"`` covers float32, float64 and bfloat16 (float32 accumulation; the forward with AVX-512
  BF16 dot products where the CPU has them, see ``csrc/README.md``); float16 takes the composite;
* if ``"cpp"`` is selected but the extension is missing (not built, or fails to import) the
  composite runs instead, after one warning.
"""
from __future__ import annotations

import importlib
import os
import warnings

import torch

ENV = "VITA_CLIP_CPU_KERNEL"
BACKENDS = ("cpp", "composite")
DEFAULT_BACKEND = "cpp"
MODULE = "vita_clip.kernels._prompt_attention_cpu"
DTYPES = (torch.float32, torch.float64, torch.bfloat16)

_backend: str | None = None  # set_cpu_backend's choice (None: the environment or the default)
_loaded: bool | None = None  # None: not tried yet
_load_error: str = ""
_warned = False


def set_cpu_backend(name: str) -> None:
    """Select the CPU implementation of ``vita_clip::prompt_attention``: ``"cpp"`` or ``"composite"``."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"CPU backend must be one of {BACKENDS}, got {name!r}")
    _backend = name


def get_cpu_backend() -> str:
    """The selected CPU backend (what was asked for; see :func:`extension_available` for what runs)."""
    if _backend is not None:
        return _backend
    name = os.environ.get(ENV, DEFAULT_BACKEND).strip().lower() or DEFAULT_BACKEND
    if name not in BACKENDS:
        raise ValueError(f"{ENV} must be one of {BACKENDS}, got {name!r}")
    return name


def _import_extension() -> None:
    importlib.import_module(MODULE)


def extension_available() -> bool:
    """Whether the C++ ops are registered (the extension is imported on the first call)."""
    global _loaded, _load_error
    if _loaded is None:
        try:
            _import_extension()
            _loaded = hasattr(torch.ops.vita_clip_cpu, "prompt_attention_fwd")
            if not _loaded:
                _load_error = "the module registered no torch.ops.vita_clip_cpu ops"
        except Exception as e:  # not built (ImportError), or built against another torch (OSError, ...)
            _loaded, _load_error = False, f"{e.__class__.__name__}: {e}"
    return _loaded


def use_cpp(dtype: torch.dtype) -> bool:
    """Whether a CPU call in ``dtype`` runs the C++ op (warns once when it should but cannot)."""
    global _warned
    if get_cpu_backend() != "cpp" or dtype not in DTYPES:
        return False
    if extension_available():
        return True
    if not _warned:
        _warned = True
        warnings.warn(f"vita_clip: C++ CPU kernel unavailable ({_load_error.splitlines()[0] if _load_error else '?'}); "
                      f"prompt_attention uses the composite (set {ENV}=composite to silence)", RuntimeWarning,
                      stacklevel=3)
    return False
