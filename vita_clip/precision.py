"""The one definition of ``--precision`` for ``train``, ``eval`` and ``predict``: the names,
what ``auto`` becomes on a device, and the autocast context of a resolved precision.

``auto`` is bf16 on a CUDA GPU that supports it, else fp16 on CUDA; on a CPU it is bf16 when
the CPU has native bf16 dot products (AVX-512 BF16 or AMX: there the fused bf16 forward is
the fastest, see README "Mixed precision"), else fp32 (bf16 without them is emulated and
slower than fp32). fp16 on a CPU works but is several times slower than fp32 (no fp16 math
on most CPUs), so it warns.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
AUTO_HELP = ("auto: bf16 on a GPU that supports it (else fp16); on a CPU bf16 when it has AVX-512 BF16 or AMX, "
             "else fp32")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX tiles)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``precision`` (one of :data:`PRECISIONS`) as the concrete one it means on ``device``:
    ``fp32``, ``bf16`` or ``fp16``. A bad value raises ``ValueError`` naming ``--precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        warnings.warn("--precision fp16 on a CPU is several times slower than fp32 (most CPUs have no fp16 "
                      "arithmetic); bf16 or fp32 are the fast choices there", RuntimeWarning, stacklevel=2)
    return precision


def autocast(device: str | torch.device, precision: str):
    """The autocast context of a resolved ``precision`` on ``device`` (``fp32``: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in DTYPES:
        raise ValueError(f"autocast takes a resolved precision (fp32, bf16, fp16), got {precision!r}")
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[precision])
