"""Summary attention: Vita-CLIP's cross-frame MHSA as one op.

For the projected CLS tokens ``c`` of every video, ``(B, T, D)``::

    s = c + out_proj(MHSA(LN(c)))     # attention over the T frames of each video, all heads

The summary token of frame t is ``s[b, t]``. LayerNorm, the q/k/v projections, the
attention and the output projection with the residual form one op (one dispatch, one fake
for ``torch.compile``). Both implementations run the same composite (:func:`_composite`):
LayerNorm and the four projections as torch ops over all B*T rows at once (batched GEMMs,
cuBLAS on a GPU, which follow torch's TF32 settings), and only the attention over the T frames
differs: torch's SDPA on the CPU, one small Triton kernel on CUDA. Backward: the vjp of the
same composite (it recomputes the forward; the branch is tiny next to the frozen ViT), with
the attention's backward a second Triton kernel on CUDA.
``summary_attention_reference`` is the eager reference the implementations are tested against.

Triton kernels (the attention of all videos and heads in one launch):

* forward, grid (B * heads,), one program per (video, head): ``softmax(q k^T / sqrt(d)) v``
  over the T frames, q/k/v read in the (B, T, D) layout the projections write and the output
  written in the layout ``out_proj`` reads (no transposes, no copies). The attention is tiny
  (T <= 64 keys), so it is a plain row softmax rather than an online one.
* backward, same grid: recompute ``P`` and ``dV = P^T dO``, ``dS = P (dP - rowsum(P dP))``,
  ``dQ = dS K / sqrt(d)``, ``dK = dS^T Q / sqrt(d)`` (FlashAttention-2's formulas, Dao 2023).
  No atomics: deterministic.
* dtypes: q/k/v in ``c``'s dtype (float16, bfloat16, float32; float64 anywhere falls back to
  the composite). Every tile is converted to float32 after its load: the softmax and every dot
  accumulate in float32; float32 dots use TF32 when torch's CUDA matmuls may
  (``torch.backends.cuda.matmul.fp32_precision``), IEEE float32 otherwise; 16-bit inputs use
  TF32 (exact for the loaded tiles: TF32 keeps fp16's 10 mantissa bits; ``P`` is rounded to
  them, below the rounding of the 16-bit output).
* limits: T <= 64 frames (padded to >= 16, tl.dot's smallest tile), head dim <= 128 (every
  CLIP ViT: 64 for B and L, 80 for H), any width (checked by compiling for sm_90 ahead of
  time, ``kernels/_aot.py``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _launch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the composite needs no Triton, the CUDA kernels are not registered
    triton = None

WEIGHTS = ("ln_weight", "ln_bias", "q_weight", "q_bias", "k_weight", "k_bias", "v_weight", "v_bias",
           "out_weight", "out_bias")


def summary_attention_reference(c: Tensor, ln_weight: Tensor, ln_bias: Tensor, q_weight: Tensor, q_bias: Tensor,
                                k_weight: Tensor, k_bias: Tensor, v_weight: Tensor, v_bias: Tensor,
                                out_weight: Tensor, out_bias: Tensor, heads: int, eps: float = 1e-5) -> Tensor:
    b, t, d = c.shape
    y = F.layer_norm(c, (d,), ln_weight, ln_bias, eps)

    def split(x):
        return x.view(b, t, heads, d // heads).transpose(1, 2)

    q, k, v = (split(F.linear(y, w, bias)) for w, bias in ((q_weight, q_bias), (k_weight, k_bias), (v_weight, v_bias)))
    scores = (q @ k.transpose(-1, -2)) / (d // heads) ** 0.5
    mixed = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, t, d)
    return c + F.linear(mixed, out_weight, out_bias)


def check_inputs(c: Tensor, weights: tuple[Tensor, ...], heads: int) -> None:
    if c.dim() != 3:
        raise ValueError(f"summary_attention: c must be (videos, frames, width), got {tuple(c.shape)}")
    d = c.shape[-1]
    if heads < 1 or d % heads:
        raise ValueError(f"summary_attention: width {d} is not divisible by heads={heads}")
    for name, w in zip(WEIGHTS, weights):
        expected = (d, d) if name.endswith("_weight") and not name.startswith("ln") else (d,)
        if tuple(w.shape) != expected:
            raise ValueError(f"summary_attention: {name} must be {expected}, got {tuple(w.shape)}")
        if w.device != c.device:
            raise ValueError(f"summary_attention: {name} is on {w.device}, c on {c.device}")


def _sdpa_over_frames(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """The attention of :func:`_composite` on the CPU: (B, T, D) q/k/v -> (B, T, D), torch's SDPA."""
    b, t, d = q.shape
    q, k, v = (x.view(b, t, heads, d // heads).transpose(1, 2) for x in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)


def _qkv(c, ln_w, ln_b, q_w, q_b, k_w, k_b, v_w, v_b, eps):
    """LayerNorm and q/k/v projections of :func:`_composite`: three (B, T, D) tensors in c's dtype."""
    d = c.shape[-1]
    dtype, stats = c.dtype, torch.float64 if c.dtype == torch.float64 else torch.float32
    with torch.autocast(c.device.type, enabled=False):
        y = F.layer_norm(c.to(stats), (d,), ln_w.to(stats), ln_b.to(stats), eps).to(dtype)
        # three projections of the B*T rows: concatenating the (D, D) weights would copy 3 D^2 per call
        return tuple(F.linear(y, w.to(dtype), bias.to(dtype)) for w, bias in ((q_w, q_b), (k_w, k_b), (v_w, v_b)))


def _out(c, mixed, o_w, o_b):
    """Output projection and residual of :func:`_composite`."""
    with torch.autocast(c.device.type, enabled=False):
        return c + F.linear(mixed, o_w.to(c.dtype), o_b.to(c.dtype))


def _composite(c, weights, heads, eps, attention=_sdpa_over_frames):
    """The op in torch ops, with ``attention`` ((B, T, D) q, k, v, heads -> (B, T, D)) over the
    frames. Its dtype rule: LayerNorm in float32 (float64 for float64 ``c``) with the LayerNorm
    parameters in that precision, the projections and the attention in ``c``'s dtype (parameters
    cast to it, as autocast casts a linear's weight), the output in ``c``'s dtype; autograd
    through the casts gives each parameter's gradient in its own dtype. The caller's autocast
    state plays no part (the backward runs outside it)."""
    return _out(c, attention(*_qkv(c, *weights[:8], eps), heads), *weights[8:])


def _owned(grads, grad) -> list[Tensor]:
    """Contiguous gradients, none sharing memory with ``grad``: an op's outputs never alias its inputs."""
    storage = grad.untyped_storage().data_ptr()
    return [g.clone(memory_format=torch.contiguous_format) if g.untyped_storage().data_ptr() == storage
            else g.contiguous() for g in grads]


def _composite_vjp(grad, inputs, heads, eps) -> list[Tensor]:
    """Gradients of ``c`` and the ten weights: the vjp of :func:`_composite` (it recomputes the
    forward). An op body runs below the autograd dispatch key; torch.func.vjp differentiates there."""
    _, vjp = torch.func.vjp(lambda *xs: _composite(xs[0], xs[1:], heads, eps), *inputs)
    return _owned(vjp(grad), grad)


# -- Triton kernels ----------------------------------------------------------------------------
#
# B videos, T frames, D width, HEADS heads of HD = D / HEADS dims. q/k/v, the output gradient and
# every output are contiguous (B, T, D) (the launchers make them so): head h of video b is the
# (T, HD) block at rows b*T.., columns h*HD... Every tile is converted to float32 right after its
# load. Frames are padded to BLOCK_T >= 16 (tl.dot's smallest tile) and masked.

if triton is not None:

    @triton.jit
    def _program_head(T, D, HEADS, HD, BLOCK_T: tl.constexpr, BLOCK_HD: tl.constexpr):
        """Element offsets and mask of this program's (BLOCK_T, BLOCK_HD) block: head
        ``pid % HEADS`` of video ``pid // HEADS``."""
        pid = tl.program_id(0)
        b = (pid // HEADS).to(tl.int64)
        h = pid % HEADS
        offs_t = tl.arange(0, BLOCK_T)
        offs_j = tl.arange(0, BLOCK_HD)
        offs = (b * T + offs_t)[:, None] * D + (h * HD + offs_j)[None, :]
        return offs, (offs_t < T)[:, None] & (offs_j < HD)[None, :]

    @triton.jit
    def _load_head(ptr, offs, mask):
        """A head's block of a (B, T, D) tensor in float32, zero where padded."""
        return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _frame_softmax(q, k, T, sm_scale, BLOCK_T: tl.constexpr, PRECISION: tl.constexpr):
        """softmax(q k^T * sm_scale) over the T valid frames: (BLOCK_T, BLOCK_T) float32."""
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * (sm_scale * 1.4426950408889634)  # log2 units
        s = tl.where((tl.arange(0, BLOCK_T) < T)[None, :], s, float("-inf"))
        p = tl.exp2(s - tl.max(s, 1)[:, None])
        return p / tl.sum(p, 1)[:, None]

    @triton.jit
    def _frame_attention_fwd_kernel(
        q_ptr, k_ptr, v_ptr,  # (B, T, D)
        out_ptr,  # (B, T, D), q's dtype
        T, D, HEADS, HD, sm_scale,
        BLOCK_T: tl.constexpr, BLOCK_HD: tl.constexpr, PRECISION: tl.constexpr,
    ):
        """Grid (B * HEADS,): the attention of one head of one video over its frames."""
        offs, mask = _program_head(T, D, HEADS, HD, BLOCK_T, BLOCK_HD)
        q, k, v = _load_head(q_ptr, offs, mask), _load_head(k_ptr, offs, mask), _load_head(v_ptr, offs, mask)
        p = _frame_softmax(q, k, T, sm_scale, BLOCK_T, PRECISION)
        out = tl.dot(p, v, input_precision=PRECISION)
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _frame_attention_bwd_kernel(
        q_ptr, k_ptr, v_ptr,  # (B, T, D)
        dout_ptr,  # (B, T, D) gradient of the output
        dq_ptr, dk_ptr, dv_ptr,  # (B, T, D) outputs, q's dtype
        T, D, HEADS, HD, sm_scale,
        BLOCK_T: tl.constexpr, BLOCK_HD: tl.constexpr, PRECISION: tl.constexpr,
    ):
        """Grid (B * HEADS,): recompute P of one head of one video and backpropagate to q, k, v.
        Padded query rows have a zero output gradient, so they add nothing to dk and dv."""
        offs, mask = _program_head(T, D, HEADS, HD, BLOCK_T, BLOCK_HD)
        q, k, v = _load_head(q_ptr, offs, mask), _load_head(k_ptr, offs, mask), _load_head(v_ptr, offs, mask)
        do = _load_head(dout_ptr, offs, mask)
        p = _frame_softmax(q, k, T, sm_scale, BLOCK_T, PRECISION)
        dv = tl.dot(tl.trans(p), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - tl.sum(p * dp, 1)[:, None])
        dq = tl.dot(ds, k, input_precision=PRECISION) * sm_scale
        dk = tl.dot(tl.trans(ds), q, input_precision=PRECISION) * sm_scale
        tl.store(dq_ptr + offs, dq.to(dq_ptr.dtype.element_ty), mask=mask)
        tl.store(dk_ptr + offs, dk.to(dk_ptr.dtype.element_ty), mask=mask)
        tl.store(dv_ptr + offs, dv.to(dv_ptr.dtype.element_ty), mask=mask)


# -- launchers ---------------------------------------------------------------------------------

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_FRAMES, MAX_HEAD_DIM = 64, 128


def _check_launch(c: Tensor, weights: tuple[Tensor, ...], heads: int) -> None:
    """What the Triton path needs beyond :func:`check_inputs`."""
    if triton is None:
        raise RuntimeError("summary_attention: the Triton kernels need the `triton` package")
    check_inputs(c, weights, heads)
    if c.dtype not in _KERNEL_DTYPES:
        raise ValueError(f"summary_attention: the Triton kernels take float16, bfloat16 or float32, c is {c.dtype}")
    for name, w in zip(WEIGHTS, weights):  # cast to c's dtype (the LayerNorm's to float32): any mix of these
        if w.dtype not in _KERNEL_DTYPES:
            raise ValueError(f"summary_attention: {name} is {w.dtype}: the Triton kernels take float16, bfloat16 "
                             f"or float32 parameters")
    if not _launch.accepts(c.device):
        raise ValueError(f"summary_attention: the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1), "
                         f"c is on {c.device}")
    _, frames, width = c.shape
    if frames > MAX_FRAMES or width // heads > MAX_HEAD_DIM:
        # the kernels hold a video's whole (frames x head dim) q/k/v tiles: larger ones need more
        # registers and shared memory than an sm_90 CTA has (compiled ahead of time, kernels/_aot.py)
        raise ValueError(f"summary_attention: the Triton kernels take at most {MAX_FRAMES} frames and "
                         f"{MAX_HEAD_DIM} dims per head, c is {tuple(c.shape)} with heads={heads}")


def _launch_config(q: Tensor, heads: int) -> dict:
    """Fixed heuristic (no autotuning: one program per (video, head), whole tiles)."""
    _, frames, width = q.shape
    return dict(BLOCK_T=max(16, triton.next_power_of_2(frames)),
                BLOCK_HD=max(16, triton.next_power_of_2(width // heads)),
                PRECISION=_launch.fp32_dot_precision() if q.dtype == torch.float32 else "tf32", num_warps=4)


def frame_attention_forward(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Triton: ``softmax(q k^T / sqrt(d)) v`` per video and head over the frames of (B, T, D)
    q, k, v (the projections' layout); (B, T, D) contiguous, q's dtype. Inputs as
    :func:`summary_attention_forward` checks them."""
    videos, frames, width = q.shape
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = _launch.empty(q.shape, q.dtype, q.device)
    if out.numel():
        with _launch.device_of(q):
            _launch.launch(_frame_attention_fwd_kernel, (videos * heads,), q, k, v, out, frames, width, heads,
                           width // heads, (width // heads) ** -0.5, **_launch_config(q, heads))
    return out


def frame_attention_backward(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, heads: int) -> tuple[Tensor, Tensor,
                                                                                                  Tensor]:
    """Triton: the gradients of q, k, v of :func:`frame_attention_forward`, (B, T, D) contiguous."""
    videos, frames, width = q.shape
    q, k, v, grad = q.contiguous(), k.contiguous(), v.contiguous(), grad.contiguous()
    dq, dk, dv = (_launch.empty(q.shape, q.dtype, q.device) for _ in range(3))
    if q.numel():
        with _launch.device_of(q):
            _launch.launch(_frame_attention_bwd_kernel, (videos * heads,), q, k, v, grad, dq, dk, dv, frames,
                           width, heads, width // heads, (width // heads) ** -0.5, **_launch_config(q, heads))
    return dq, dk, dv


def summary_attention_forward(c: Tensor, ln_weight: Tensor, ln_bias: Tensor, q_weight: Tensor, q_bias: Tensor,
                              k_weight: Tensor, k_bias: Tensor, v_weight: Tensor, v_bias: Tensor, out_weight: Tensor,
                              out_bias: Tensor, heads: int, eps: float = 1e-5) -> Tensor:
    """The op's CUDA forward: ``c + out_proj(MHSA(LN(c)))``, (B, T, D) contiguous in c's dtype.

    LayerNorm and the projections by torch over all B*T rows, the attention by
    :func:`frame_attention_forward` (one launch, a program per video and head).
    """
    weights = (ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias)
    _check_launch(c, weights, heads)
    return _composite(c, weights, heads, eps, frame_attention_forward).contiguous()


def summary_attention_backward(grad: Tensor, c: Tensor, ln_weight: Tensor, ln_bias: Tensor, q_weight: Tensor,
                               q_bias: Tensor, k_weight: Tensor, k_bias: Tensor, v_weight: Tensor, v_bias: Tensor,
                               out_weight: Tensor, out_bias: Tensor, heads: int, eps: float = 1e-5) -> list[Tensor]:
    """The op's CUDA backward: gradients of ``c`` and the ten weights (in the argument order),
    contiguous, each in its input's dtype: the vjp of the forward's composite, with
    :func:`frame_attention_backward` for the attention (it recomputes the forward)."""
    weights = (ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias)
    _check_launch(c, weights, heads)
    if grad.shape != c.shape or grad.dtype != c.dtype or grad.device != c.device:
        raise ValueError(f"summary_attention: grad must be {tuple(c.shape)} {c.dtype} on {c.device}, got "
                         f"{tuple(grad.shape)} {grad.dtype} on {grad.device}")
    # vjps of the torch parts on both sides of the attention; the kernels take plain tensors
    (q, k, v), qkv_vjp = torch.func.vjp(lambda c, *w: _qkv(c, *w, eps), c, *weights[:8])
    _, out_vjp = torch.func.vjp(_out, c, frame_attention_forward(q, k, v, heads), *weights[8:])
    dc_residual, dmixed, dwo, dbo = out_vjp(grad)
    dc, *dqkv_weights = qkv_vjp(frame_attention_backward(dmixed, q, k, v, heads))
    return _owned([dc + dc_residual, *dqkv_weights, dwo, dbo], grad)


# -- custom ops --------------------------------------------------------------------------------


@torch.library.custom_op("vita_clip::summary_attention", mutates_args=())
def summary_attention_op(c: Tensor, ln_weight: Tensor, ln_bias: Tensor, q_weight: Tensor, q_bias: Tensor,
                         k_weight: Tensor, k_bias: Tensor, v_weight: Tensor, v_bias: Tensor, out_weight: Tensor,
                         out_bias: Tensor, heads: int, eps: float) -> Tensor:
    weights = (ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias)
    check_inputs(c, weights, heads)
    return _composite(c, weights, heads, eps).contiguous()


@summary_attention_op.register_fake
def _(c, ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias, heads, eps):
    return torch.empty_like(c, memory_format=torch.contiguous_format)


if triton is not None:

    @summary_attention_op.register_kernel("cuda")
    def _(c, ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias, heads,
          eps):
        weights = (ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias)
        if torch.float64 in (c.dtype, *(w.dtype for w in weights)):  # no float64 kernel: the composite
            check_inputs(c, weights, heads)
            return _composite(c, weights, heads, eps).contiguous()
        return summary_attention_forward(c, *weights, heads, eps)


@torch.library.custom_op("vita_clip::summary_attention_backward", mutates_args=())
def summary_attention_backward_op(grad: Tensor, c: Tensor, ln_weight: Tensor, ln_bias: Tensor, q_weight: Tensor,
                                  q_bias: Tensor, k_weight: Tensor, k_bias: Tensor, v_weight: Tensor, v_bias: Tensor,
                                  out_weight: Tensor, out_bias: Tensor, heads: int, eps: float) -> list[Tensor]:
    inputs = (c, ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias)
    return _composite_vjp(grad, inputs, heads, eps)


@summary_attention_backward_op.register_fake
def _(grad, c, ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias,
      heads, eps):
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in
            (c, ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias)]


if triton is not None:

    @summary_attention_backward_op.register_kernel("cuda")
    def _(grad, c, ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias,
          heads, eps):
        inputs = (c, ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias)
        if torch.float64 in (t.dtype for t in inputs):
            return _composite_vjp(grad, inputs, heads, eps)
        return summary_attention_backward(grad, *inputs, heads, eps)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:11])
    ctx.heads, ctx.eps = inputs[11], inputs[12]


def _backward(ctx, grad):
    grads = summary_attention_backward_op(grad.contiguous(), *ctx.saved_tensors, ctx.heads, ctx.eps)
    return (*grads, None, None)


summary_attention_op.register_autograd(_backward, setup_context=_setup_context)


def summary_attention(c: Tensor, ln_weight: Tensor, ln_bias: Tensor, q_weight: Tensor, q_bias: Tensor,
                      k_weight: Tensor, k_bias: Tensor, v_weight: Tensor, v_bias: Tensor, out_weight: Tensor,
                      out_bias: Tensor, heads: int, eps: float = 1e-5) -> Tensor:
    """``c + out_proj(MHSA(LN(c)))`` over the frames of each video, ``(B, T, D)``; differentiable."""
    return summary_attention_op(c, ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias,
                                out_weight, out_bias, heads, eps)
