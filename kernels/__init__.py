"""Fused Triton kernels of vita-clip, installed as ``vita_clip.kernels``.

Each kernel file holds its Triton kernels, the launcher with input checks, the custom-op
registration and, beside them, the eager reference it is tested against. The kernels
(prompt attention without concatenation, the cross-frame summary attention in one launch)
are not part of this version yet; ``VitaCLIP(fused=True)`` says so when asked for them.
"""
