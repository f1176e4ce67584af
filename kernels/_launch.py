"""What the Triton launchers of both kernel files share."""
from __future__ import annotations

import contextlib
import os

import torch
from torch import Tensor


def empty(shape, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every launcher allocation goes through here (the tests swap in a NaN-filled version)."""
    return torch.empty(shape, dtype=dtype, device=device)


def interpreting() -> bool:
    """Whether Triton runs in its interpreter (CPU tensors allowed)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")


# (kernel, grid, args, kwargs) of every launch while record_launches() is active, else None
_recorded: list | None = None


def launch(kernel, grid, *args, **kwargs) -> None:
    """Every launcher's kernel launch goes through here, so that :func:`record_launches` can see
    the exact arguments and specialisation (constexprs, num_warps, ...) a launch would use."""
    if _recorded is not None:
        _recorded.append((kernel, grid, args, kwargs))
    else:
        kernel[grid](*args, **kwargs)


def autotuning() -> bool:
    """``VITA_CLIP_AUTOTUNE=1``: on CUDA, :func:`launch_tuned` times its candidate configs."""
    return os.environ.get("VITA_CLIP_AUTOTUNE", "0").lower() in ("1", "true", "on")


# (kernel name, launcher's key) -> the fastest config found by launch_tuned in this process
_tuned: dict = {}


def _time_ms(fn) -> float:
    """Median milliseconds of ``fn`` on the current CUDA device (the tests swap in a fake clock)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median")


def _capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def launch_tuned(kernel, grid, configs: list[dict], key, *args, **kwargs) -> dict:
    """Launch ``kernel`` with one of ``configs`` (kwargs such as tile constexprs, ``num_warps``,
    ``num_stages``; ``grid(config)`` is the grid) and return the config used.

    ``configs[0]``, the launcher's deterministic default, unless autotuning on CUDA
    (:func:`autotuning`): then each config is timed once per ``(kernel, key)`` and the fastest is
    kept for the process (results then depend on timing: tile sizes change the summation order).
    Timing reruns the kernel, so it must only write its outputs; a launch during a CUDA graph
    capture is never timed (it takes the choice made so far, else the default). While
    :func:`record_launches` is active every config is recorded, so ``_aot`` compiles each one the
    launcher may pick."""
    if _recorded is not None:
        for config in configs:
            launch(kernel, grid(config), *args, **kwargs, **config)
        return configs[0]
    config = configs[0]
    if len(configs) > 1 and autotuning() and not interpreting():
        name = (kernel.fn.__name__, key)
        if name not in _tuned and not _capturing():
            _tuned[name] = min(configs, key=lambda c: _time_ms(lambda: kernel[grid(c)](*args, **kwargs, **c)))
        config = _tuned.get(name, config)
    launch(kernel, grid(config), *args, **kwargs, **config)
    return config


@contextlib.contextmanager
def record_launches():
    """Within the block the launchers record their launches (a list, yielded) instead of running
    them, and take CPU tensors standing in for CUDA ones: what ``_aot`` compiles ahead of time.
    The launchers' outputs are then left unwritten."""
    global _recorded
    previous, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = previous


def accepts(device: torch.device) -> bool:
    """Whether the Triton launchers take tensors on ``device``."""
    return device.type == "cuda" or interpreting() or _recorded is not None


def device_of(t: Tensor):
    """Triton launches on the current CUDA device: make it ``t``'s."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def fp32_dot_precision() -> str:
    """``tl.dot`` input precision for float32 operands: TF32 when torch's CUDA matmuls may use it
    (``torch.backends.cuda.matmul.fp32_precision = "tf32"``, or the legacy ``allow_tf32`` /
    ``set_float32_matmul_precision("high")``, which set it), IEEE float32 otherwise."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision is None:  # torch without the per-backend API
        return "tf32" if matmul.allow_tf32 else "ieee"
    if precision == "none":  # inherits the global setting
        precision = getattr(torch.backends, "fp32_precision", "none")
    return "tf32" if precision == "tf32" else "ieee"


def upcast_loads(dtype: torch.dtype) -> bool:
    """Whether kernels convert 16-bit tiles to float32 right after loading them before any
    arithmetic: only for bfloat16 in the interpreter, whose bfloat16 arithmetic is wrong (numpy
    has no bfloat16). On a GPU, 16-bit tiles feed the tensor cores as they are."""
    return dtype == torch.bfloat16 and interpreting()
