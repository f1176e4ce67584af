"""Summary attention: Vita-CLIP's cross-frame MHSA as one op.

For the projected CLS tokens ``c`` of every video, ``(B, T, D)``::

    s = c + out_proj(MHSA(LN(c)))     # attention over the T frames of each video, all heads

The summary token of frame t is ``s[b, t]``. LayerNorm, the q/k/v projections, the
attention and the output projection with the residual form one op, so a GPU runs the whole
branch of one layer for the whole batch in one launch (the Triton kernel) instead of a
chain of small kernels. The CPU composite runs the same math with torch ops; its backward
recomputes the forward under autograd (the op is tiny next to the frozen ViT).
``summary_attention_reference`` is the eager reference the implementations are tested against.

Triton kernels (what is fused, where it comes from, limits):

* forward, one launch for the batch, one program per video: LayerNorm statistics (two
  passes over the width), then for each head the q/k/v projections of the normalised rows
  (LayerNorm applied on the fly, tile by tile), softmax over the frames and ``P V`` into a
  float32 (B*T, D) scratch; after a CTA barrier the output projection, bias and residual.
  The attention is tiny (T <= 64 keys), so it is a plain row softmax rather than an online
  one; the dot/softmax/backward formulas are FlashAttention-2's (Dao, 2023) with the
  recomputation done per video.
* backward, three launches: (1) per video, recompute LN/q/k/v/P and backpropagate through
  the output projection and the attention (``dV = P^T dM``, ``dS = P (dP - rowsum(P dP))``)
  to float32 dq/dk/dv rows; (2) per video, ``dy = dq Wq + dk Wk + dv Wv`` and the LayerNorm
  backward to ``dc`` (plus the residual); (3) the weight and bias gradients as GEMMs
  ``dW = A^T X`` over all B*T rows, one output tile per program, and the LayerNorm weight and
  bias as column sums. No atomics: deterministic.
* dtypes (mixed precision): ``c`` and each parameter in float16, bfloat16 or float32, in any
  mix (under autocast ``c`` is bfloat16/float16 while the LayerNorm and projection parameters
  stay float32); the output and ``dc`` are in ``c``'s dtype, each parameter's gradient in that
  parameter's dtype. float64 anywhere falls back to the composite. The kernels load every tile
  in its own dtype and compute in float32; float32 dots use TF32 when torch's CUDA matmuls may
  (``torch.backends.cuda.matmul.fp32_precision``), IEEE float32 otherwise; 16-bit ``c`` uses
  TF32. The CPU composite follows the same rule with torch ops (see :func:`_composite`).
* limits: T <= 64 frames (padded to >= 16, tl.dot's smallest tile), head dim <= 256, padded
  T x head dim <= 64 x 128 (larger tiles need more shared memory than an sm_90 CTA has); any
  width. Only B programs run in parallel: meant for the small per-layer summary branch
  (D <= 1024), not as a general attention kernel.
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


def _composite(c, weights, heads, eps):
    """The op's dtype rule in torch ops: LayerNorm in float32 (float64 for float64 ``c``) with the
    LayerNorm parameters in that precision, the projections and the attention in ``c``'s dtype
    (parameters cast to it, as autocast casts a linear's weight), the output in ``c``'s dtype;
    autograd through the casts gives each parameter's gradient in its own dtype. The caller's
    autocast state plays no part (the backward runs outside it)."""
    ln_w, ln_b, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b = weights
    b, t, d = c.shape
    dtype, stats = c.dtype, torch.float64 if c.dtype == torch.float64 else torch.float32
    with torch.autocast(c.device.type, enabled=False):
        y = F.layer_norm(c.to(stats), (d,), ln_w.to(stats), ln_b.to(stats), eps).to(dtype)
        # three projections of the B*T rows: concatenating the (D, D) weights would copy 3 D^2 per call
        q, k, v = (F.linear(y, w.to(dtype), bias.to(dtype)).view(b, t, heads, d // heads).transpose(1, 2)
                   for w, bias in ((q_w, q_b), (k_w, k_b), (v_w, v_b)))
        mixed = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        return c + F.linear(mixed, o_w.to(dtype), o_b.to(dtype))


# -- Triton kernels ----------------------------------------------------------------------------
#
# B videos, T frames, D width, HEADS heads of HD = D / HEADS dims; N = B * T rows. Weights are
# row-major (out, in) = (D, D) and vectors contiguous (the launchers make them so). Every tile is
# converted to float32 right after its load; dots use float32 operands (``input_precision`` "ieee"
# for float32 inputs, "tf32" for 16-bit ones). Frames are padded to BLOCK_T >= 16 (tl.dot's
# smallest tile) and masked.

if triton is not None:

    @triton.jit
    def _ln_stats(c_base, stride_t, stride_d, T, D, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, eps):
        """Mean and 1/std over the width of the T rows at c_base (two passes), (BLOCK_T,) float32 each."""
        offs_t = tl.arange(0, BLOCK_T)
        t_mask = offs_t < T
        total = tl.zeros([BLOCK_T], dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask = t_mask[:, None] & (offs_k < D)[None, :]
            x = tl.load(c_base + offs_t[:, None] * stride_t + offs_k[None, :] * stride_d, mask=mask, other=0.0)
            total += tl.sum(x.to(tl.float32), 1)
        mean = total / D
        squares = tl.zeros([BLOCK_T], dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask = t_mask[:, None] & (offs_k < D)[None, :]
            x = tl.load(c_base + offs_t[:, None] * stride_t + offs_k[None, :] * stride_d, mask=mask, other=0.0)
            x = tl.where(mask, x.to(tl.float32) - mean[:, None], 0.0)
            squares += tl.sum(x * x, 1)
        return mean, 1.0 / tl.sqrt_rn(squares / D + eps)

    @triton.jit
    def _head_qkv(c_base, stride_t, stride_d, mean, rstd, lnw_ptr, lnb_ptr, wq_ptr, bq_ptr, wk_ptr, bk_ptr,
                  wv_ptr, bv_ptr, h, T, D, HD, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
                  BLOCK_HD: tl.constexpr, PRECISION: tl.constexpr):
        """q, k, v of head h for the T frames at c_base: ``LN(c) W[h*HD:(h+1)*HD]^T + b``, each
        (BLOCK_T, BLOCK_HD) float32 with padded rows and columns zero."""
        offs_t = tl.arange(0, BLOCK_T)
        t_mask = offs_t < T
        offs_j = tl.arange(0, BLOCK_HD)
        j_mask = offs_j < HD
        features = h * HD + offs_j  # output features of head h
        q = tl.zeros([BLOCK_T, BLOCK_HD], dtype=tl.float32)
        k = tl.zeros([BLOCK_T, BLOCK_HD], dtype=tl.float32)
        v = tl.zeros([BLOCK_T, BLOCK_HD], dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < D
            mask = t_mask[:, None] & k_mask[None, :]
            x = tl.load(c_base + offs_t[:, None] * stride_t + offs_k[None, :] * stride_d, mask=mask, other=0.0)
            lnw = tl.load(lnw_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
            lnb = tl.load(lnb_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
            y = (x.to(tl.float32) - mean[:, None]) * rstd[:, None] * lnw[None, :] + lnb[None, :]
            y = tl.where(mask, y, 0.0)
            w_offs = features[:, None] * D + offs_k[None, :]
            w_mask = j_mask[:, None] & k_mask[None, :]
            wq = tl.load(wq_ptr + w_offs, mask=w_mask, other=0.0).to(tl.float32)
            wk = tl.load(wk_ptr + w_offs, mask=w_mask, other=0.0).to(tl.float32)
            wv = tl.load(wv_ptr + w_offs, mask=w_mask, other=0.0).to(tl.float32)
            q += tl.dot(y, tl.trans(wq), input_precision=PRECISION)
            k += tl.dot(y, tl.trans(wk), input_precision=PRECISION)
            v += tl.dot(y, tl.trans(wv), input_precision=PRECISION)
        rows = t_mask[:, None] & j_mask[None, :]
        q = tl.where(rows, q + tl.load(bq_ptr + features, mask=j_mask, other=0.0).to(tl.float32)[None, :], 0.0)
        k = tl.where(rows, k + tl.load(bk_ptr + features, mask=j_mask, other=0.0).to(tl.float32)[None, :], 0.0)
        v = tl.where(rows, v + tl.load(bv_ptr + features, mask=j_mask, other=0.0).to(tl.float32)[None, :], 0.0)
        return q, k, v

    @triton.jit
    def _frame_softmax(q, k, T, sm_scale, BLOCK_T: tl.constexpr, PRECISION: tl.constexpr):
        """softmax(q k^T * sm_scale) over the T valid frames: (BLOCK_T, BLOCK_T) float32."""
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * (sm_scale * 1.4426950408889634)  # log2 units
        s = tl.where((tl.arange(0, BLOCK_T) < T)[None, :], s, float("-inf"))
        p = tl.exp2(s - tl.max(s, 1)[:, None])
        return p / tl.sum(p, 1)[:, None]

    @triton.jit
    def _summary_attention_fwd_kernel(
        c_ptr,  # (B, T, D)
        lnw_ptr, lnb_ptr,  # (D,) LayerNorm weight and bias
        wq_ptr, bq_ptr, wk_ptr, bk_ptr, wv_ptr, bv_ptr,  # (D, D), (D,) q/k/v projections
        wo_ptr, bo_ptr,  # (D, D), (D,) output projection
        mixed_ptr,  # (N, D) contiguous float32 scratch: attention output of every head
        out_ptr,  # (B, T, D) contiguous, c's dtype
        stride_cb, stride_ct, stride_cd, T, D, HEADS, HD, eps, sm_scale,
        BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_HD: tl.constexpr, PRECISION: tl.constexpr,
    ):
        """Grid (B,): the whole summary branch of one video."""
        b = tl.program_id(0).to(tl.int64)
        c_base = c_ptr + b * stride_cb
        offs_t = tl.arange(0, BLOCK_T)
        t_mask = offs_t < T
        rows = b * T + offs_t
        offs_j = tl.arange(0, BLOCK_HD)
        j_mask = offs_j < HD
        mean, rstd = _ln_stats(c_base, stride_ct, stride_cd, T, D, BLOCK_T, BLOCK_K, eps)
        for h in range(0, HEADS):
            q, k, v = _head_qkv(c_base, stride_ct, stride_cd, mean, rstd, lnw_ptr, lnb_ptr, wq_ptr, bq_ptr, wk_ptr,
                                bk_ptr, wv_ptr, bv_ptr, h, T, D, HD, BLOCK_T, BLOCK_K, BLOCK_HD, PRECISION)
            p = _frame_softmax(q, k, T, sm_scale, BLOCK_T, PRECISION)
            mixed = tl.dot(p, v, input_precision=PRECISION)
            tl.store(mixed_ptr + rows[:, None] * D + (h * HD + offs_j)[None, :], mixed,
                     mask=t_mask[:, None] & j_mask[None, :])
        # The output projection reads every head's columns, written by other threads of this program.
        tl.debug_barrier()
        for n0 in range(0, D, BLOCK_K):
            offs_n = n0 + tl.arange(0, BLOCK_K)
            n_mask = offs_n < D
            tn_mask = t_mask[:, None] & n_mask[None, :]
            acc = tl.load(c_base + offs_t[:, None] * stride_ct + offs_n[None, :] * stride_cd, mask=tn_mask,
                          other=0.0).to(tl.float32)
            acc += tl.load(bo_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
            for k0 in range(0, D, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                k_mask = offs_k < D
                mixed = tl.load(mixed_ptr + rows[:, None] * D + offs_k[None, :], mask=t_mask[:, None] & k_mask[None, :],
                                other=0.0)
                wo = tl.load(wo_ptr + offs_n[:, None] * D + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :],
                             other=0.0).to(tl.float32)
                acc += tl.dot(mixed, tl.trans(wo), input_precision=PRECISION)
            tl.store(out_ptr + rows[:, None] * D + offs_n[None, :], acc.to(out_ptr.dtype.element_ty), mask=tn_mask)

    @triton.jit
    def _summary_attention_bwd_attn_kernel(
        c_ptr,  # (B, T, D)
        g_ptr,  # (B, T, D) gradient of the output
        lnw_ptr, lnb_ptr,  # (D,)
        wq_ptr, bq_ptr, wk_ptr, bk_ptr, wv_ptr, bv_ptr,  # (D, D), (D,)
        wo_ptr,  # (D, D)
        acts_ptr,  # (N, 3D) contiguous float32 scratch, written here: [mixed | y = LN(c) | xhat]
        grads_ptr,  # (N, 5D) contiguous float32 scratch, written here: [g | dq | dk | dv | (dy: LN kernel)]
        stats_ptr,  # (N, 2) contiguous float32 scratch, written here: mean, rstd
        stride_cb, stride_ct, stride_cd, stride_gb, stride_gt, stride_gd, T, D, HEADS, HD, eps, sm_scale,
        BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_HD: tl.constexpr, PRECISION: tl.constexpr,
    ):
        """Grid (B,): recompute the forward of one video and backpropagate through the output
        projection and the attention, down to the q/k/v projection outputs."""
        b = tl.program_id(0).to(tl.int64)
        c_base = c_ptr + b * stride_cb
        g_base = g_ptr + b * stride_gb
        offs_t = tl.arange(0, BLOCK_T)
        t_mask = offs_t < T
        rows = b * T + offs_t
        offs_j = tl.arange(0, BLOCK_HD)
        j_mask = offs_j < HD
        tj_mask = t_mask[:, None] & j_mask[None, :]
        mean, rstd = _ln_stats(c_base, stride_ct, stride_cd, T, D, BLOCK_T, BLOCK_K, eps)
        tl.store(stats_ptr + rows * 2, mean, mask=t_mask)
        tl.store(stats_ptr + rows * 2 + 1, rstd, mask=t_mask)
        for k0 in range(0, D, BLOCK_K):  # y, xhat and g as float32 rows for the weight-gradient kernel
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < D
            mask = t_mask[:, None] & k_mask[None, :]
            x = tl.load(c_base + offs_t[:, None] * stride_ct + offs_k[None, :] * stride_cd, mask=mask,
                        other=0.0).to(tl.float32)
            xhat = (x - mean[:, None]) * rstd[:, None]
            lnw = tl.load(lnw_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
            lnb = tl.load(lnb_ptr + offs_k, mask=k_mask, other=0.0).to(tl.float32)
            tl.store(acts_ptr + rows[:, None] * 3 * D + D + offs_k[None, :], xhat * lnw[None, :] + lnb[None, :],
                     mask=mask)
            tl.store(acts_ptr + rows[:, None] * 3 * D + 2 * D + offs_k[None, :], xhat, mask=mask)
            g = tl.load(g_base + offs_t[:, None] * stride_gt + offs_k[None, :] * stride_gd, mask=mask, other=0.0)
            tl.store(grads_ptr + rows[:, None] * 5 * D + offs_k[None, :], g.to(tl.float32), mask=mask)
        for h in range(0, HEADS):
            q, k, v = _head_qkv(c_base, stride_ct, stride_cd, mean, rstd, lnw_ptr, lnb_ptr, wq_ptr, bq_ptr, wk_ptr,
                                bk_ptr, wv_ptr, bv_ptr, h, T, D, HD, BLOCK_T, BLOCK_K, BLOCK_HD, PRECISION)
            p = _frame_softmax(q, k, T, sm_scale, BLOCK_T, PRECISION)
            cols = h * HD + offs_j
            tl.store(acts_ptr + rows[:, None] * 3 * D + cols[None, :], tl.dot(p, v, input_precision=PRECISION),
                     mask=tj_mask)
            dmixed = tl.zeros([BLOCK_T, BLOCK_HD], dtype=tl.float32)  # g @ Wo[:, head h]
            for k0 in range(0, D, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                k_mask = offs_k < D
                g = tl.load(g_base + offs_t[:, None] * stride_gt + offs_k[None, :] * stride_gd,
                            mask=t_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
                wo = tl.load(wo_ptr + offs_k[:, None] * D + cols[None, :], mask=k_mask[:, None] & j_mask[None, :],
                             other=0.0).to(tl.float32)
                dmixed += tl.dot(g, wo, input_precision=PRECISION)
            dv = tl.dot(tl.trans(p), dmixed, input_precision=PRECISION)
            dp = tl.dot(dmixed, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - tl.sum(p * dp, 1)[:, None])
            dq = tl.dot(ds, k, input_precision=PRECISION) * sm_scale
            dk = tl.dot(tl.trans(ds), q, input_precision=PRECISION) * sm_scale
            grad_offs = rows[:, None] * 5 * D + cols[None, :]
            tl.store(grads_ptr + grad_offs + D, dq, mask=tj_mask)
            tl.store(grads_ptr + grad_offs + 2 * D, dk, mask=tj_mask)
            tl.store(grads_ptr + grad_offs + 3 * D, dv, mask=tj_mask)

    @triton.jit
    def _summary_attention_bwd_ln_kernel(
        g_ptr,  # (B, T, D) gradient of the output
        lnw_ptr,  # (D,)
        wq_ptr, wk_ptr, wv_ptr,  # (D, D)
        acts_ptr,  # (N, 3D) float32 scratch from the attention kernel: [mixed | y | xhat]
        grads_ptr,  # (N, 5D) float32 scratch: reads [g | dq | dk | dv], writes dy = dq Wq + dk Wk + dv Wv
        stats_ptr,  # (N, 2) float32 scratch: mean, rstd
        dc_ptr,  # (B, T, D) contiguous, c's dtype
        stride_gb, stride_gt, stride_gd, T, D,
        BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    ):
        """Grid (B,): gradient of the LayerNorm input (plus the residual) for one video."""
        b = tl.program_id(0).to(tl.int64)
        offs_t = tl.arange(0, BLOCK_T)
        t_mask = offs_t < T
        rows = b * T + offs_t
        rstd = tl.load(stats_ptr + rows * 2 + 1, mask=t_mask, other=0.0)
        sum_dxhat = tl.zeros([BLOCK_T], dtype=tl.float32)
        sum_dxhat_xhat = tl.zeros([BLOCK_T], dtype=tl.float32)
        for n0 in range(0, D, BLOCK_K):
            offs_n = n0 + tl.arange(0, BLOCK_K)
            n_mask = offs_n < D
            tn_mask = t_mask[:, None] & n_mask[None, :]
            dy = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.float32)
            for k0 in range(0, D, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                k_mask = offs_k < D
                a_offs = rows[:, None] * 5 * D + offs_k[None, :]
                a_mask = t_mask[:, None] & k_mask[None, :]
                w_offs = offs_k[:, None] * D + offs_n[None, :]
                w_mask = k_mask[:, None] & n_mask[None, :]
                dq = tl.load(grads_ptr + a_offs + D, mask=a_mask, other=0.0)
                dk = tl.load(grads_ptr + a_offs + 2 * D, mask=a_mask, other=0.0)
                dv = tl.load(grads_ptr + a_offs + 3 * D, mask=a_mask, other=0.0)
                dy += tl.dot(dq, tl.load(wq_ptr + w_offs, mask=w_mask, other=0.0).to(tl.float32),
                             input_precision=PRECISION)
                dy += tl.dot(dk, tl.load(wk_ptr + w_offs, mask=w_mask, other=0.0).to(tl.float32),
                             input_precision=PRECISION)
                dy += tl.dot(dv, tl.load(wv_ptr + w_offs, mask=w_mask, other=0.0).to(tl.float32),
                             input_precision=PRECISION)
            tl.store(grads_ptr + rows[:, None] * 5 * D + 4 * D + offs_n[None, :], dy, mask=tn_mask)
            xhat = tl.load(acts_ptr + rows[:, None] * 3 * D + 2 * D + offs_n[None, :], mask=tn_mask, other=0.0)
            dxhat = dy * tl.load(lnw_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
            sum_dxhat += tl.sum(dxhat, 1)
            sum_dxhat_xhat += tl.sum(dxhat * xhat, 1)
        # The second pass reads dy written above by other threads of this program.
        tl.debug_barrier()
        for n0 in range(0, D, BLOCK_K):
            offs_n = n0 + tl.arange(0, BLOCK_K)
            n_mask = offs_n < D
            tn_mask = t_mask[:, None] & n_mask[None, :]
            dy = tl.load(grads_ptr + rows[:, None] * 5 * D + 4 * D + offs_n[None, :], mask=tn_mask, other=0.0)
            xhat = tl.load(acts_ptr + rows[:, None] * 3 * D + 2 * D + offs_n[None, :], mask=tn_mask, other=0.0)
            dxhat = dy * tl.load(lnw_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
            g = tl.load(g_ptr + b * stride_gb + offs_t[:, None] * stride_gt + offs_n[None, :] * stride_gd,
                        mask=tn_mask, other=0.0).to(tl.float32)
            dc = g + rstd[:, None] * (dxhat - (sum_dxhat[:, None] + xhat * sum_dxhat_xhat[:, None]) / D)
            tl.store(dc_ptr + rows[:, None] * D + offs_n[None, :], dc.to(dc_ptr.dtype.element_ty), mask=tn_mask)

    @triton.jit
    def _summary_attention_bwd_weights_kernel(
        acts_ptr,  # (N, 3D) float32 scratch: [mixed | y | xhat]
        grads_ptr,  # (N, 5D) float32 scratch: [g | dq | dk | dv | dy]
        dwo_ptr, dbo_ptr, dwq_ptr, dbq_ptr, dwk_ptr, dbk_ptr, dwv_ptr, dbv_ptr,  # (D, D), (D,) contiguous outputs
        dlnw_ptr, dlnb_ptr,  # (D,) contiguous outputs
        N, D,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr,
    ):
        """Grid (cdiv(D, BLOCK_M), cdiv(D, BLOCK_N), 5): axis 2 picks the gradient, 0..3 = Wo, Wq, Wk,
        Wv (``dW = A^T X`` over all N rows, A the output gradient, X the input; the bias gradient
        ``sum A`` comes from the programs with pid_n == 0), 4 = the LayerNorm weight and bias."""
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        which = tl.program_id(2)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        m_mask = offs_m < D
        a_col = which * D  # column block of grads_ptr: g, dq, dk, dv, dy
        x_col = D * ((which > 0).to(tl.int32) + (which > 3).to(tl.int32))  # of acts_ptr: mixed, y, y, y, xhat
        if which < 4:
            offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            n_mask = offs_n < D
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            bias = tl.zeros([BLOCK_M], dtype=tl.float32)
            for r0 in range(0, N, BLOCK_R):
                offs_r = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)
                r_mask = offs_r < N
                a = tl.load(grads_ptr + offs_r[:, None] * 5 * D + a_col + offs_m[None, :],
                            mask=r_mask[:, None] & m_mask[None, :], other=0.0)
                x = tl.load(acts_ptr + offs_r[:, None] * 3 * D + x_col + offs_n[None, :],
                            mask=r_mask[:, None] & n_mask[None, :], other=0.0)
                acc += tl.dot(tl.trans(a), x, input_precision=PRECISION)
                bias += tl.sum(a, 0)
            if which == 0:
                dw_ptr = dwo_ptr
                db_ptr = dbo_ptr
            elif which == 1:
                dw_ptr = dwq_ptr
                db_ptr = dbq_ptr
            elif which == 2:
                dw_ptr = dwk_ptr
                db_ptr = dbk_ptr
            else:
                dw_ptr = dwv_ptr
                db_ptr = dbv_ptr
            tl.store(dw_ptr + offs_m[:, None] * D + offs_n[None, :], acc.to(dw_ptr.dtype.element_ty),
                     mask=m_mask[:, None] & n_mask[None, :])
            tl.store(db_ptr + offs_m, bias.to(db_ptr.dtype.element_ty), mask=m_mask & (pid_n == 0))
        else:
            if pid_n == 0:
                dlnw = tl.zeros([BLOCK_M], dtype=tl.float32)
                dlnb = tl.zeros([BLOCK_M], dtype=tl.float32)
                for r0 in range(0, N, BLOCK_R):
                    offs_r = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)
                    mask = (offs_r < N)[:, None] & m_mask[None, :]
                    dy = tl.load(grads_ptr + offs_r[:, None] * 5 * D + a_col + offs_m[None, :], mask=mask, other=0.0)
                    xhat = tl.load(acts_ptr + offs_r[:, None] * 3 * D + x_col + offs_m[None, :], mask=mask, other=0.0)
                    dlnw += tl.sum(dy * xhat, 0)
                    dlnb += tl.sum(dy, 0)
                tl.store(dlnw_ptr + offs_m, dlnw.to(dlnw_ptr.dtype.element_ty), mask=m_mask)
                tl.store(dlnb_ptr + offs_m, dlnb.to(dlnb_ptr.dtype.element_ty), mask=m_mask)


# -- launchers ---------------------------------------------------------------------------------

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_FRAME_HEAD_TILE = 64 * 128


def _check_launch(c: Tensor, weights: tuple[Tensor, ...], heads: int) -> None:
    """What the Triton kernels need beyond :func:`check_inputs`."""
    if triton is None:
        raise RuntimeError("summary_attention: the Triton kernels need the `triton` package")
    check_inputs(c, weights, heads)
    if c.dtype not in _KERNEL_DTYPES:
        raise ValueError(f"summary_attention: the Triton kernels take float16, bfloat16 or float32, c is {c.dtype}")
    for name, w in zip(WEIGHTS, weights):  # every tile is upcast after its load: any mix of these dtypes
        if w.dtype not in _KERNEL_DTYPES:
            raise ValueError(f"summary_attention: {name} is {w.dtype}: the Triton kernels take float16, bfloat16 "
                             f"or float32 parameters")
    if not _launch.accepts(c.device):
        raise ValueError(f"summary_attention: the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1), "
                         f"c is on {c.device}")
    _, frames, width = c.shape
    padded = max(16, triton.next_power_of_2(frames)) * max(16, triton.next_power_of_2(width // heads))
    if frames > 64 or width // heads > 256 or padded > MAX_FRAME_HEAD_TILE:
        # the (frames x head dim) float32 tiles live in shared memory: larger ones exceed an sm_90
        # CTA's 227 KB (checked by compiling ahead of time, tests/test_kernels_aot.py)
        raise ValueError(f"summary_attention: the Triton kernels take at most 64 frames, 256 dims per head and "
                         f"(frames x head dim, each padded to a power of two >= 16) <= {MAX_FRAME_HEAD_TILE} "
                         f"(e.g. 64 x 128 or 32 x 256), c is {tuple(c.shape)} with heads={heads}")


def _launch_config(c: Tensor, heads: int) -> dict:
    """Fixed heuristic (no autotuning); float32 ("ieee" dots on FMA units) takes narrower K tiles
    to limit register spills."""
    _, frames, width = c.shape
    block_t = max(16, triton.next_power_of_2(frames))
    block_hd = max(16, triton.next_power_of_2(width // heads))
    return dict(BLOCK_T=block_t, BLOCK_K=16 if c.dtype == torch.float32 else 32, BLOCK_HD=block_hd,
                PRECISION=_launch.fp32_dot_precision() if c.dtype == torch.float32 else "tf32",
                num_warps=4 if block_t * block_hd <= 1024 else 8)


def summary_attention_forward(c: Tensor, ln_weight: Tensor, ln_bias: Tensor, q_weight: Tensor, q_bias: Tensor,
                              k_weight: Tensor, k_bias: Tensor, v_weight: Tensor, v_bias: Tensor, out_weight: Tensor,
                              out_bias: Tensor, heads: int, eps: float = 1e-5) -> Tensor:
    """Triton forward: ``c + out_proj(MHSA(LN(c)))``, (B, T, D) contiguous in c's dtype.

    One kernel launch for the whole batch (one program per video; a float32 (B*T, D) scratch
    holds the attention output between the heads and the output projection).
    """
    weights = (ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias)
    _check_launch(c, weights, heads)
    videos, frames, width = c.shape
    out = _launch.empty((videos, frames, width), c.dtype, c.device)
    if out.numel() == 0:
        return out
    mixed = _launch.empty((videos * frames, width), torch.float32, c.device)
    head_dim = width // heads
    with _launch.device_of(c):
        _launch.launch(_summary_attention_fwd_kernel, (videos,), c, *(w.contiguous() for w in weights), mixed, out,
                       *c.stride(), frames, width, heads, head_dim, eps, head_dim ** -0.5, **_launch_config(c, heads))
    return out


def summary_attention_backward(grad: Tensor, c: Tensor, ln_weight: Tensor, ln_bias: Tensor, q_weight: Tensor,
                               q_bias: Tensor, k_weight: Tensor, k_bias: Tensor, v_weight: Tensor, v_bias: Tensor,
                               out_weight: Tensor, out_bias: Tensor, heads: int, eps: float = 1e-5) -> list[Tensor]:
    """Triton backward: gradients of ``c`` and the ten weights (in the argument order), contiguous.

    Three launches: (1) per video, recompute LN, q/k/v and attention and backpropagate to the
    q/k/v projection outputs; (2) per video, through the q/k/v projections and the LayerNorm to
    ``c``; (3) the weight and bias gradients as ``A^T X`` over all B*T rows, one output tile per
    program (no atomics: deterministic).
    """
    weights = (ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias)
    _check_launch(c, weights, heads)
    if grad.shape != c.shape or grad.dtype != c.dtype or grad.device != c.device:
        raise ValueError(f"summary_attention: grad must be {tuple(c.shape)} {c.dtype} on {c.device}, got "
                         f"{tuple(grad.shape)} {grad.dtype} on {grad.device}")
    videos, frames, width = c.shape
    rows, head_dim = videos * frames, width // heads
    if rows == 0:
        return [torch.zeros_like(c)] + [torch.zeros_like(w) for w in weights]
    weights = tuple(w.contiguous() for w in weights)
    lnw, lnb, wq, bq, wk, bk, wv, bv, wo, bo = weights
    device = c.device
    acts = _launch.empty((rows, 3 * width), torch.float32, device)
    grads = _launch.empty((rows, 5 * width), torch.float32, device)
    stats = _launch.empty((rows, 2), torch.float32, device)
    dc = _launch.empty(c.shape, c.dtype, device)
    dlnw, dlnb, dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo = (_launch.empty(w.shape, w.dtype, device) for w in weights)
    config = _launch_config(c, heads)
    tile = 64
    with _launch.device_of(c):
        _launch.launch(_summary_attention_bwd_attn_kernel, (videos,), c, grad, lnw, lnb, wq, bq, wk, bk, wv, bv, wo,
                       acts, grads, stats, *c.stride(), *grad.stride(), frames, width, heads, head_dim, eps,
                       head_dim ** -0.5, **config)
        _launch.launch(_summary_attention_bwd_ln_kernel, (videos,), grad, lnw, wq, wk, wv, acts, grads, stats, dc,
                       *grad.stride(), frames, width, BLOCK_T=config["BLOCK_T"], BLOCK_K=config["BLOCK_K"],
                       PRECISION=config["PRECISION"], num_warps=config["num_warps"])
        grid = (triton.cdiv(width, tile), triton.cdiv(width, tile), 5)
        _launch.launch(_summary_attention_bwd_weights_kernel, grid, acts, grads, dwo, dbo, dwq, dbq, dwk, dbk, dwv,
                       dbv, dlnw, dlnb, rows, width, BLOCK_M=tile, BLOCK_N=tile, BLOCK_R=32,
                       PRECISION=config["PRECISION"], num_warps=4)
    return [dc, dlnw, dlnb, dwq, dbq, dwk, dbk, dwv, dbv, dwo, dbo]


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
        if torch.float64 in (c.dtype, *(w.dtype for w in weights)):  # no float64 tile path: the composite
            check_inputs(c, weights, heads)
            return _composite(c, weights, heads, eps).contiguous()
        return summary_attention_forward(c, *weights, heads, eps)


@torch.library.custom_op("vita_clip::summary_attention_backward", mutates_args=())
def summary_attention_backward_op(grad: Tensor, c: Tensor, ln_weight: Tensor, ln_bias: Tensor, q_weight: Tensor,
                                  q_bias: Tensor, k_weight: Tensor, k_bias: Tensor, v_weight: Tensor, v_bias: Tensor,
                                  out_weight: Tensor, out_bias: Tensor, heads: int, eps: float) -> list[Tensor]:
    inputs = (c, ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias)
    # An op body runs below the autograd dispatch key; torch.func.vjp differentiates there.
    _, vjp = torch.func.vjp(lambda *xs: _composite(xs[0], xs[1:], heads, eps), *inputs)
    return [g.clone(memory_format=torch.contiguous_format) for g in vjp(grad)]  # never alias `grad`


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
            _, vjp = torch.func.vjp(lambda *xs: _composite(xs[0], xs[1:], heads, eps), *inputs)
            return [g.clone(memory_format=torch.contiguous_format) for g in vjp(grad)]
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
