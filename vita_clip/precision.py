"""The one definition of ``--precision`` for ``train``, ``eval`` and ``predict``: the names,
what ``auto`` becomes on a device, and the autocast context of a resolved precision.

``auto`` is bf16 on a CUDA GPU that supports it, else fp16 on CUDA; on a CPU it is bf16 when
the CPU has native bf16 dot products (AVX-512 BF16 or AMX: there the fused bf16 forward is
the fastest, see README "Mixed precision"), else fp32 (bf16 without them is emulated and
slower than fp32). fp16 on a CPU works but is several times slower than fp32 (no fp16 math
on most CPUs), so it warns.

:func:`autocast_linear` is ``F.linear`` for the fused layers' frozen weights: autocast casts a
float32 weight that needs no gradient again in every call (its cache holds only tensors that
require gradients), about 5% of a bf16 ViT-B/16 forward on a CPU; here the cast copy is made
once and kept on the parameter. For bf16 inference on a CPU the weight is also kept in
oneDNN's packed layout (``torch.ops.mkldnn``, what inductor's CPU freezing uses), so the GEMM
does not re-pack it in every call. Both give the results of autocast's ``F.linear`` bit for bit
(the same rounding, the same oneDNN kernel; checked in the tests).
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F

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


_CAST_ATTR = "_vita_clip_autocast_copy"
_PACKED_ATTR = "_vita_clip_packed_bf16"
_cast_cache = True
_packing: bool | None = None  # whether oneDNN packs bf16 linear weights here (None: not tried yet)


def set_cast_cache(enabled: bool) -> bool:
    """Switch :func:`autocast_copy`'s cache on or off (off: autocast casts in every call, as
    plain torch does); returns the previous setting."""
    global _cast_cache
    previous, _cast_cache = _cast_cache, bool(enabled)
    return previous


def autocast_copy(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """``tensor`` as autocast casts it for a matrix product on its device (float32 -> the
    autocast dtype), made once and kept on the tensor until it changes (in place, e.g. an
    optimizer step or ``load_state_dict``, or its storage is replaced); ``tensor`` itself where
    autocast is off, where autograd needs the cast recorded, or under ``torch.compile``."""
    if tensor is None or not _cast_cache or tensor.dtype != torch.float32:
        return tensor
    device = tensor.device.type
    if not torch.is_autocast_enabled(device) or (tensor.requires_grad and torch.is_grad_enabled()):
        return tensor
    if torch.compiler.is_compiling():
        return tensor
    dtype = torch.get_autocast_dtype(device)
    stamp = (dtype, tensor._version, tensor.data_ptr())
    cached = tensor.__dict__.get(_CAST_ATTR)
    if cached is None or cached[0] != stamp:
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable outside inference mode
            cached = (stamp, tensor.detach().to(dtype))
        tensor.__dict__[_CAST_ATTR] = cached
    return cached[1]


def _packed_bf16(weight: torch.Tensor, rows: int) -> torch.Tensor | None:
    """``weight`` in bf16 in oneDNN's packed layout, made once (like :func:`autocast_copy`), or
    ``None`` where oneDNN cannot (no mkldnn, no bf16 support, the ops gone from this torch)."""
    global _packing
    if _packing is None:
        ops = torch.ops.mkldnn
        _packing = (torch.backends.mkldnn.is_available() and hasattr(ops, "_linear_pointwise")
                    and hasattr(ops, "_reorder_linear_weight") and ops._is_mkldnn_bf16_supported())
    if not _packing:
        return None
    stamp = (weight._version, weight.data_ptr())
    cached = weight.__dict__.get(_PACKED_ATTR)
    if cached is None or cached[0] != stamp:
        with torch.inference_mode(False), torch.no_grad():
            try:
                cached = (stamp, torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(torch.bfloat16), rows))
            except RuntimeError:
                _packing = False
                return None
        weight.__dict__[_PACKED_ATTR] = cached
    return cached[1]


def autocast_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` with the weight and bias cast by :func:`autocast_copy`; in
    bf16 inference on a CPU (no autograd, a contiguous input) with the packed weight."""
    cast_weight, cast_bias = autocast_copy(weight), autocast_copy(bias)
    if (cast_weight is not weight and cast_weight.dtype == torch.bfloat16 and x.device.type == "cpu"
            and not torch.is_grad_enabled() and x.dim() >= 2):
        x = x.to(torch.bfloat16)  # what autocast does to the input of F.linear
        packed = _packed_bf16(weight, x.numel() // x.shape[-1]) if x.is_contiguous() else None
        if packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, packed, cast_bias, "none", [], "")
    return F.linear(x, cast_weight, cast_bias)
