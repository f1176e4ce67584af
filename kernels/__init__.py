"""Fused kernels of vita-clip, installed as ``vita_clip.kernels``.

* ``prompt_attention``: the frozen ViT attention of a Vita-CLIP layer with queries only for
  the surviving tokens and keys/values from four sources (own tokens, local, global and
  summary prompts), without building the concatenated sequence;
* ``summary_attention``: the whole cross-frame summary branch (LayerNorm, q/k/v, attention
  over the frames, output projection, residual) as one op.

Each file holds the kernels, the launcher with its input checks, the ``torch.library``
custom-op registration (with fake and autograd implementations, so ``torch.compile``
traces through) and the eager reference the implementations are tested against.

``set_cpu_backend("cpp" | "composite")`` (or ``VITA_CLIP_CPU_KERNEL``) chooses the CPU
implementation of ``prompt_attention``: the C++ kernel of ``csrc/`` (default; falls back to
the composite with one warning if the extension was not built) or the composite.
"""
from ._cpu_extension import get_cpu_backend, set_cpu_backend

__all__ = ["get_cpu_backend", "set_cpu_backend"]
