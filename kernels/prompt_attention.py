"""Prompt attention: the frozen ViT attention of Vita-CLIP without building the prompt sequence.

The released code concatenates ``[CLS, local(T), global(M), patches, summary]`` for every
frame, runs LayerNorm, q/k/v projections and attention over all of them, keeps the outputs
of CLS and patches only and strips the rest. Here only the surviving tokens have queries,
and each frame attends to keys/values coming from four sources:

* its own tokens ``k, v``                      (F, H, L, d)  F = B*T frames, frame-major
* the local prompts of its video ``k_local``   (B, H, T_l, d) shared by the video's frames
* the layer's global prompts ``k_global``       (H, M, d)     shared by every frame
* its own summary token ``k_summary``           (F, H, d)

``out = softmax(q [k; k_local[b]; k_global; k_summary[f]]^T / sqrt(d)) [v; ...]`` with
shape (F, H, L, d) laid out as a contiguous (F, L, H, d) (``out.transpose(1, 2).reshape(F, L,
H * d)``, ``out_proj``'s input, is a view), plus the log-sum-exp of the scores (F, H, L,
float32) for the backward. Any of the three prompt sources may be ``None``.

Implementations: on CPU the C++ kernel of ``csrc/prompt_attention.cpp`` (float32/float64/bfloat16; the
same split-source online softmax, built as an optional extension, see ``_cpu_extension``) or
the composite below (per-frame K/V concatenation + torch's flash attention for CPU, whose
backward gives the gradients that are then reduced over the frames sharing a source), chosen
by ``vita_clip.kernels.set_cpu_backend`` / ``VITA_CLIP_CPU_KERNEL``; on CUDA the Triton kernels.
``prompt_attention_reference`` is the float64-capable eager reference every implementation is tested against.

Triton kernels (what is fused, where it comes from, limits):

* forward, one launch: FlashAttention-2 style online softmax (Dao, 2023; the Triton fused-
  attention tutorial) with the key loop split over the four sources: a program owns one
  (frame, head) and BLOCK_M queries, walks the frame's own K/V tiles, then the video's local
  prompts, the global prompts and the summary key, each read through its own pointer and
  strides (the concatenated sequence is never built; absent sources are compiled out);
  writes ``out`` (in out_proj's layout, see above) and ``lse``.
* backward, two launches plus small reductions: (1) ``dq`` and ``delta = rowsum(dO * O)``
  per (frame, head, query block), looping over the four sources like the forward; (2) ``dk,
  dv``: programs ``0..cdiv(L, BLOCK_N)-1`` of a (frame, head) own one tile of its own keys,
  the last three programs handle its local prompts, the global prompts and its summary key
  (each loops over the frame's L queries). Local and global gradients are shared by several
  frames: every frame writes its float32 partial into a (F, H, n, d) buffer that torch sums
  over the frames of a video (local) or over all frames (global). No atomics, so results are
  deterministic and the fp16/bf16 reductions happen in float32.
* limits: q/k/v/prompts in float16, bfloat16 or float32, one dtype (float64 falls back to the
  composite), head dim <= 128 (16/32/64/128 are exact tiles, others are padded), any token and
  prompt count. float32 dots use TF32 when torch's CUDA matmuls may
  (``torch.backends.cuda.matmul.fp32_precision = "tf32"``, or the legacy flags), IEEE float32
  otherwise (then they match the reference to ~1e-6); 16-bit dots feed the tensor cores and
  accumulate in float32 like FlashAttention; the softmax statistics are float32 throughout. In
  Triton's interpreter bfloat16 tiles are upcast to float32 right after loading (``UPCAST``:
  the interpreter's bfloat16 arithmetic is wrong).
* launch configs: each kernel has a small space of tile sizes, warps and stages per (dots,
  head dim) (``_CONFIG_SPACE``), capped at the token and prompt counts. By default the launchers
  take its first entry (deterministic); with ``VITA_CLIP_AUTOTUNE=1`` on CUDA they time the space
  once per shape (tokens, head dim, prompt counts, dtype, float32 precision) and keep the fastest
  (``_launch.launch_tuned``; results then vary with timing in the last bits). Every config of the
  space at the ViT-B/16 and ViT-L/14 shapes is compiled for sm_90 in CI (``_aot``,
  tests/kernels/test_kernels_aot.py): none spills or reaches 255 registers, all fit the shared
  memory of an sm_90 CTA (at most ~112 KB, head dim 128), so every shape the launchers admit
  compiles.
* mixed precision: under autocast the op casts its inputs to the autocast dtype (see
  ``_register_autocast``); outside autocast the inputs must share one dtype.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _cpu_extension, _launch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the composite needs no Triton, the CUDA kernels are not registered
    triton = None

# -- eager reference ---------------------------------------------------------------------------


def concat_prompt_kv(k: Tensor, k_local: Tensor | None, k_global: Tensor | None, k_summary: Tensor | None) -> Tensor:
    """Per-frame keys (or values) of all sources, ``(F, H, L + T_l + M + 1, d)``."""
    frames, heads, _, dim = k.shape
    parts = [k]
    if k_local is not None:
        per_video = frames // k_local.shape[0]
        parts.append(k_local.repeat_interleave(per_video, dim=0))
    if k_global is not None:
        parts.append(k_global.unsqueeze(0).expand(frames, heads, -1, dim))
    if k_summary is not None:
        parts.append(k_summary.unsqueeze(2))
    return torch.cat(parts, dim=2)


def prompt_attention_reference(q, k, v, k_local=None, v_local=None, k_global=None, v_global=None,
                               k_summary=None, v_summary=None) -> tuple[Tensor, Tensor]:
    """Plain softmax attention over the concatenated sources: ``(out, lse)``."""
    keys = concat_prompt_kv(k, k_local, k_global, k_summary)
    values = concat_prompt_kv(v, v_local, v_global, v_summary)
    scores = (q @ keys.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ values, torch.logsumexp(scores.to(lse_dtype(q.dtype)), dim=-1)


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The log-sum-exp is kept in float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# -- input checks ------------------------------------------------------------------------------


def check_inputs(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary) -> None:
    if q.dim() != 4:
        raise ValueError(f"prompt_attention: q must be (frames, heads, tokens, head_dim), got {tuple(q.shape)}")
    frames, heads, _, dim = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"prompt_attention: k {tuple(k.shape)} and v {tuple(v.shape)} must match q {tuple(q.shape)}")
    pairs = {"local": (k_local, v_local), "global": (k_global, v_global), "summary": (k_summary, v_summary)}
    for name, (key, value) in pairs.items():
        if (key is None) != (value is None):
            raise ValueError(f"prompt_attention: k_{name} and v_{name} must both be given or both be None")
        if key is None:
            continue
        if key.shape != value.shape:
            raise ValueError(f"prompt_attention: k_{name} {tuple(key.shape)} and v_{name} {tuple(value.shape)} differ")
        if key.dtype != q.dtype or key.device != q.device:
            raise ValueError(f"prompt_attention: k_{name} is {key.dtype} on {key.device}, q is {q.dtype} on {q.device}")
    if k_local is not None and (k_local.dim() != 4 or k_local.shape[1] != heads or k_local.shape[3] != dim
                                or frames % k_local.shape[0]):
        raise ValueError(f"prompt_attention: k_local must be (videos, {heads}, prompts, {dim}) with {frames} frames "
                         f"a multiple of videos, got {tuple(k_local.shape)}")
    if k_global is not None and (k_global.dim() != 3 or k_global.shape[0] != heads or k_global.shape[2] != dim):
        raise ValueError(f"prompt_attention: k_global must be ({heads}, prompts, {dim}), got {tuple(k_global.shape)}")
    if k_summary is not None and tuple(k_summary.shape) != (frames, heads, dim):
        raise ValueError(f"prompt_attention: k_summary must be ({frames}, {heads}, {dim}), got {tuple(k_summary.shape)}")


# -- composite implementation (CPU, and any device without a kernel) ---------------------------


def _attention_with_lse(q: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, keys, values, 0.0, False, scale=1.0 / math.sqrt(q.shape[-1]))
    acc = lse_dtype(q.dtype)
    scores = (q.to(acc) @ keys.to(acc).transpose(-1, -2)) / math.sqrt(q.shape[-1])
    lse = torch.logsumexp(scores, dim=-1)
    return (torch.exp(scores - lse.unsqueeze(-1)) @ values.to(acc)).to(q.dtype), lse


def split_source_grads(grad: Tensor, tokens: int, k_local, k_global, k_summary):
    """Split per-frame gradients of the concatenated keys (or values) back into the sources,
    summing over the frames that share a local or global source."""
    frames, heads, _, dim = grad.shape
    start = tokens
    out = [grad[:, :, :tokens]]
    if k_local is not None:
        videos, _, n, _ = k_local.shape
        part = grad[:, :, start:start + n].reshape(videos, frames // videos, heads, n, dim).sum(1)
        out.append(part.to(k_local.dtype))
        start += n
    else:
        out.append(None)
    if k_global is not None:
        n = k_global.shape[1]
        out.append(grad[:, :, start:start + n].sum(0).to(k_global.dtype))
        start += n
    else:
        out.append(None)
    out.append(grad[:, :, start].to(k_summary.dtype) if k_summary is not None else None)
    return out


def _composite_forward(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary):
    keys = concat_prompt_kv(k, k_local, k_global, k_summary)
    values = concat_prompt_kv(v, v_local, v_global, v_summary)
    out, lse = _attention_with_lse(q, keys, values)
    return out, lse.to(lse_dtype(q.dtype))


def _composite_backward(grad_out, q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary, out, lse):
    keys = concat_prompt_kv(k, k_local, k_global, k_summary)
    values = concat_prompt_kv(v, v_local, v_global, v_summary)
    if q.device.type == "cpu":
        dq, dkeys, dvalues = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_out, q, keys, values, out, lse, 0.0, False, scale=1.0 / math.sqrt(q.shape[-1]))
    else:
        scale, acc = 1.0 / math.sqrt(q.shape[-1]), lse.dtype
        p = torch.exp((q.to(acc) @ keys.to(acc).transpose(-1, -2)) * scale - lse.unsqueeze(-1))
        g = grad_out.to(acc)
        dvalues = p.transpose(-1, -2) @ g
        dp = g @ values.to(acc).transpose(-1, -2)
        ds = p * (dp - (g * out.to(acc)).sum(-1, keepdim=True))
        dq, dkeys = (ds @ keys.to(acc)) * scale, (ds.transpose(-1, -2) @ q.to(acc)) * scale
        dq, dkeys, dvalues = dq.to(q.dtype), dkeys.to(q.dtype), dvalues.to(q.dtype)
    tokens = k.shape[2]
    dk, dkl, dkg, dks = split_source_grads(dkeys, tokens, k_local, k_global, k_summary)
    dv, dvl, dvg, dvs = split_source_grads(dvalues, tokens, v_local, v_global, v_summary)
    return dq, dk, dv, dkl, dvl, dkg, dvg, dks, dvs


# -- Triton kernels ----------------------------------------------------------------------------
#
# F frames, H heads, L tokens per frame, d head dim, B videos (F = B * frames_per_video), T_l local
# and M global prompts. Scores are kept in log2 units (qk_scale = sm_scale * log2(e)) so the
# kernels use exp2; lse is stored in natural log. (frame, head) base offsets are int64.

if triton is not None:

    @triton.jit
    def _fwd_source(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd, n_keys, qk_scale,
                    offs_d, d_mask, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """Online-softmax update of ``(acc, m_i, l_i)`` with the ``n_keys`` keys/values of one source.

        k_base, v_base: (n_keys, d) rows of one (frame or video, head); q: (BLOCK_M, BLOCK_D) tile.
        """
        for start in range(0, n_keys, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            n_mask = offs_n < n_keys
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
            v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            s = tl.where(n_mask[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile holds at least one key
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        return acc, m_i, l_i

    @triton.jit
    def _prompt_attention_fwd_kernel(
        q_ptr,  # (F, H, L, d)
        k_ptr,  # (F, H, L, d)
        v_ptr,  # (F, H, L, d)
        kl_ptr,  # (B, H, T_l, d) local prompt keys of each video (unused unless HAS_LOCAL)
        vl_ptr,  # (B, H, T_l, d)
        kg_ptr,  # (H, M, d) global prompt keys (unused unless HAS_GLOBAL)
        vg_ptr,  # (H, M, d)
        ks_ptr,  # (F, H, d) summary key of each frame (unused unless HAS_SUMMARY)
        vs_ptr,  # (F, H, d)
        out_ptr,  # (F, H, L, d) in q's dtype, strides so_* (the launcher's: a contiguous (F, L, H, d))
        lse_ptr,  # (F, H, L) contiguous, float32
        sq_f, sq_h, sq_l, sq_d, sk_f, sk_h, sk_l, sk_d, sv_f, sv_h, sv_l, sv_d,
        skl_b, skl_h, skl_n, skl_d, svl_b, svl_h, svl_n, svl_d,
        skg_h, skg_n, skg_d, svg_h, svg_n, svg_d,
        sks_f, sks_h, sks_d, svs_f, svs_h, svs_d,
        so_f, so_h, so_l,  # out's last-dim stride is 1
        H, L, D, frames_per_video, n_local, n_global, sm_scale,
        HAS_LOCAL: tl.constexpr, HAS_GLOBAL: tl.constexpr, HAS_SUMMARY: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        """Grid (F * H, cdiv(L, BLOCK_M)): one (frame, head) and BLOCK_M of its queries per program."""
        pid_fh = tl.program_id(0).to(tl.int64)
        f = pid_fh // H
        h = pid_fh % H
        qk_scale = sm_scale * 1.4426950408889634  # log2(e)
        offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        m_mask = offs_m < L
        d_mask = offs_d < D
        md_mask = m_mask[:, None] & d_mask[None, :]
        q = tl.load(q_ptr + f * sq_f + h * sq_h + offs_m[:, None] * sq_l + offs_d[None, :] * sq_d, mask=md_mask,
                    other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        acc, m_i, l_i = _fwd_source(acc, m_i, l_i, q, k_ptr + f * sk_f + h * sk_h, v_ptr + f * sv_f + h * sv_h,
                                    sk_l, sk_d, sv_l, sv_d, L, qk_scale, offs_d, d_mask, BLOCK_N, PRECISION, UPCAST)
        if HAS_LOCAL:
            b = f // frames_per_video
            acc, m_i, l_i = _fwd_source(acc, m_i, l_i, q, kl_ptr + b * skl_b + h * skl_h,
                                        vl_ptr + b * svl_b + h * svl_h, skl_n, skl_d, svl_n, svl_d, n_local,
                                        qk_scale, offs_d, d_mask, BLOCK_P, PRECISION, UPCAST)
        if HAS_GLOBAL:
            acc, m_i, l_i = _fwd_source(acc, m_i, l_i, q, kg_ptr + h * skg_h, vg_ptr + h * svg_h, skg_n, skg_d,
                                        svg_n, svg_d, n_global, qk_scale, offs_d, d_mask, BLOCK_P, PRECISION, UPCAST)
        if HAS_SUMMARY:  # one key: a row-wise dot product rather than a padded tl.dot
            ks = tl.load(ks_ptr + f * sks_f + h * sks_h + offs_d * sks_d, mask=d_mask, other=0.0).to(tl.float32)
            vs = tl.load(vs_ptr + f * svs_f + h * svs_h + offs_d * svs_d, mask=d_mask, other=0.0).to(tl.float32)
            s = tl.sum(q.to(tl.float32) * ks[None, :], 1) * qk_scale
            m_new = tl.maximum(m_i, s)
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new)
            l_i = l_i * alpha + p
            acc = acc * alpha[:, None] + p[:, None] * vs[None, :]
            m_i = m_new
        tl.store(out_ptr + f * so_f + h * so_h + offs_m[:, None] * so_l + offs_d[None, :],
                 (acc / l_i[:, None]).to(out_ptr.dtype.element_ty), mask=md_mask)
        tl.store(lse_ptr + pid_fh * L + offs_m, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=m_mask)  # * ln(2)

    @triton.jit
    def _dq_source(dq, q, do, lse2, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd, n_keys,
                   qk_scale, offs_d, d_mask, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """``dq += dS K`` (without the softmax scale) over the ``n_keys`` keys/values of one source."""
        for start in range(0, n_keys, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            n_mask = offs_n < n_keys
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
            v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            p = tl.where(n_mask[None, :], tl.exp2(s - lse2[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
        return dq

    @triton.jit
    def _prompt_attention_bwd_dq_kernel(
        q_ptr, k_ptr, v_ptr,  # (F, H, L, d) each
        kl_ptr, vl_ptr,  # (B, H, T_l, d)
        kg_ptr, vg_ptr,  # (H, M, d)
        ks_ptr, vs_ptr,  # (F, H, d)
        out_ptr,  # (F, H, L, d) forward output
        do_ptr,  # (F, H, L, d) gradient of the output
        lse_ptr,  # (F, H, L) contiguous float32, natural log
        delta_ptr,  # (F, H, L) contiguous float32, written here: rowsum(dO * O)
        dq_ptr,  # (F, H, L, d) contiguous, q's dtype
        sq_f, sq_h, sq_l, sq_d, sk_f, sk_h, sk_l, sk_d, sv_f, sv_h, sv_l, sv_d,
        skl_b, skl_h, skl_n, skl_d, svl_b, svl_h, svl_n, svl_d,
        skg_h, skg_n, skg_d, svg_h, svg_n, svg_d,
        sks_f, sks_h, sks_d, svs_f, svs_h, svs_d,
        so_f, so_h, so_l, so_d, sdo_f, sdo_h, sdo_l, sdo_d,
        H, L, D, frames_per_video, n_local, n_global, sm_scale,
        HAS_LOCAL: tl.constexpr, HAS_GLOBAL: tl.constexpr, HAS_SUMMARY: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        """Grid (F * H, cdiv(L, BLOCK_M)): dq and delta of one (frame, head) and BLOCK_M queries."""
        pid_fh = tl.program_id(0).to(tl.int64)
        f = pid_fh // H
        h = pid_fh % H
        qk_scale = sm_scale * 1.4426950408889634
        offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        m_mask = offs_m < L
        d_mask = offs_d < D
        md_mask = m_mask[:, None] & d_mask[None, :]
        q = tl.load(q_ptr + f * sq_f + h * sq_h + offs_m[:, None] * sq_l + offs_d[None, :] * sq_d, mask=md_mask,
                    other=0.0)
        do = tl.load(do_ptr + f * sdo_f + h * sdo_h + offs_m[:, None] * sdo_l + offs_d[None, :] * sdo_d,
                     mask=md_mask, other=0.0)
        o = tl.load(out_ptr + f * so_f + h * so_h + offs_m[:, None] * so_l + offs_d[None, :] * so_d, mask=md_mask,
                    other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        row = pid_fh * L + offs_m
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        tl.store(delta_ptr + row, delta, mask=m_mask)
        lse2 = tl.load(lse_ptr + row, mask=m_mask, other=0.0) * 1.4426950408889634
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        dq = _dq_source(dq, q, do, lse2, delta, k_ptr + f * sk_f + h * sk_h, v_ptr + f * sv_f + h * sv_h,
                        sk_l, sk_d, sv_l, sv_d, L, qk_scale, offs_d, d_mask, BLOCK_N, PRECISION, UPCAST)
        if HAS_LOCAL:
            b = f // frames_per_video
            dq = _dq_source(dq, q, do, lse2, delta, kl_ptr + b * skl_b + h * skl_h, vl_ptr + b * svl_b + h * svl_h,
                            skl_n, skl_d, svl_n, svl_d, n_local, qk_scale, offs_d, d_mask, BLOCK_P, PRECISION, UPCAST)
        if HAS_GLOBAL:
            dq = _dq_source(dq, q, do, lse2, delta, kg_ptr + h * skg_h, vg_ptr + h * svg_h, skg_n, skg_d,
                            svg_n, svg_d, n_global, qk_scale, offs_d, d_mask, BLOCK_P, PRECISION, UPCAST)
        if HAS_SUMMARY:
            ks = tl.load(ks_ptr + f * sks_f + h * sks_h + offs_d * sks_d, mask=d_mask, other=0.0).to(tl.float32)
            vs = tl.load(vs_ptr + f * svs_f + h * svs_h + offs_d * svs_d, mask=d_mask, other=0.0).to(tl.float32)
            p = tl.exp2(tl.sum(q.to(tl.float32) * ks[None, :], 1) * qk_scale - lse2)
            ds = p * (tl.sum(do.to(tl.float32) * vs[None, :], 1) - delta)
            dq += ds[:, None] * ks[None, :]
        tl.store(dq_ptr + row[:, None] * D + offs_d[None, :], (dq * sm_scale).to(dq_ptr.dtype.element_ty),
                 mask=md_mask)

    @triton.jit
    def _dkdv_source(k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd, n_keys,
                     dk_base, dv_base,  # (n_keys, d) contiguous outputs of this (frame, head)
                     q_base, do_base, sq_l, sq_d, sdo_l, sdo_d,  # (L, d) queries and output gradients
                     lse_base, delta_base,  # (L,) contiguous float32
                     L, D, sm_scale, offs_d, d_mask, key_start, key_stop,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
                     UPCAST: tl.constexpr):
        """dk, dv of keys ``key_start..key_stop`` (tiles of BLOCK_N, ``< n_keys``) of one source and
        (frame, head), each accumulated over the frame's L queries in float32."""
        qk_scale = sm_scale * 1.4426950408889634
        for start_n in range(key_start, key_stop, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            n_mask = offs_n < n_keys
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
            v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
            dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
            for start_m in range(0, L, BLOCK_M):
                offs_m = start_m + tl.arange(0, BLOCK_M)
                m_mask = offs_m < L
                md_mask = m_mask[:, None] & d_mask[None, :]
                q = tl.load(q_base + offs_m[:, None] * sq_l + offs_d[None, :] * sq_d, mask=md_mask, other=0.0)
                do = tl.load(do_base + offs_m[:, None] * sdo_l + offs_d[None, :] * sdo_d, mask=md_mask, other=0.0)
                if UPCAST:
                    q = q.to(tl.float32)
                    do = do.to(tl.float32)
                lse2 = tl.load(lse_base + offs_m, mask=m_mask, other=0.0) * 1.4426950408889634
                delta = tl.load(delta_base + offs_m, mask=m_mask, other=0.0)
                st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # S^T: (BLOCK_N, BLOCK_M)
                pt = tl.where(n_mask[:, None] & m_mask[None, :], tl.exp2(st - lse2[None, :]), 0.0)
                dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
                dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
                dk += tl.dot((pt * (dpt - delta[None, :])).to(q.dtype), q, input_precision=PRECISION)
            out_offs = offs_n[:, None] * D + offs_d[None, :]
            tl.store(dk_base + out_offs, (dk * sm_scale).to(dk_base.dtype.element_ty), mask=kv_mask)
            tl.store(dv_base + out_offs, dv.to(dv_base.dtype.element_ty), mask=kv_mask)

    @triton.jit
    def _prompt_attention_bwd_dkdv_kernel(
        q_ptr, k_ptr, v_ptr,  # (F, H, L, d) each
        kl_ptr, vl_ptr,  # (B, H, T_l, d)
        kg_ptr, vg_ptr,  # (H, M, d)
        ks_ptr, vs_ptr,  # (F, H, d)
        do_ptr,  # (F, H, L, d) gradient of the output
        lse_ptr,  # (F, H, L) contiguous float32, natural log
        delta_ptr,  # (F, H, L) contiguous float32 from the dq kernel
        dk_ptr, dv_ptr,  # (F, H, L, d) contiguous, k's dtype
        dkl_ptr, dvl_ptr,  # (F, H, T_l, d) contiguous float32: each frame's share of the local-prompt gradients
        dkg_ptr, dvg_ptr,  # (F, H, M, d) contiguous float32: each frame's share of the global-prompt gradients
        dks_ptr, dvs_ptr,  # (F, H, d) contiguous, k's dtype
        sq_f, sq_h, sq_l, sq_d, sk_f, sk_h, sk_l, sk_d, sv_f, sv_h, sv_l, sv_d,
        skl_b, skl_h, skl_n, skl_d, svl_b, svl_h, svl_n, svl_d,
        skg_h, skg_n, skg_d, svg_h, svg_n, svg_d,
        sks_f, sks_h, sks_d, svs_f, svs_h, svs_d,
        sdo_f, sdo_h, sdo_l, sdo_d,
        H, L, D, frames_per_video, n_local, n_global, sm_scale,
        HAS_LOCAL: tl.constexpr, HAS_GLOBAL: tl.constexpr, HAS_SUMMARY: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        """Grid (F * H, cdiv(L, BLOCK_N) + 3): per (frame, head), programs ``j < cdiv(L, BLOCK_N)`` own
        one tile of its own keys; the next three its local prompts, the global prompts, its summary key."""
        pid_fh = tl.program_id(0).to(tl.int64)
        f = pid_fh // H
        h = pid_fh % H
        j = tl.program_id(1)
        n_tiles = tl.cdiv(L, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        q_base = q_ptr + f * sq_f + h * sq_h
        do_base = do_ptr + f * sdo_f + h * sdo_h
        lse_base = lse_ptr + pid_fh * L
        delta_base = delta_ptr + pid_fh * L
        if j < n_tiles:
            _dkdv_source(k_ptr + f * sk_f + h * sk_h, v_ptr + f * sv_f + h * sv_h, sk_l, sk_d, sv_l, sv_d, L,
                         dk_ptr + pid_fh * L * D, dv_ptr + pid_fh * L * D, q_base, do_base, sq_l, sq_d, sdo_l, sdo_d,
                         lse_base, delta_base, L, D, sm_scale, offs_d, d_mask, j * BLOCK_N, j * BLOCK_N + 1,
                         BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, UPCAST)
        elif j == n_tiles:
            if HAS_LOCAL:
                b = f // frames_per_video
                _dkdv_source(kl_ptr + b * skl_b + h * skl_h, vl_ptr + b * svl_b + h * svl_h, skl_n, skl_d, svl_n,
                             svl_d, n_local, dkl_ptr + pid_fh * n_local * D, dvl_ptr + pid_fh * n_local * D, q_base,
                             do_base, sq_l, sq_d, sdo_l, sdo_d, lse_base, delta_base, L, D, sm_scale, offs_d, d_mask,
                             0, n_local, BLOCK_M, BLOCK_P, BLOCK_D, PRECISION, UPCAST)
        elif j == n_tiles + 1:
            if HAS_GLOBAL:
                _dkdv_source(kg_ptr + h * skg_h, vg_ptr + h * svg_h, skg_n, skg_d, svg_n, svg_d, n_global,
                             dkg_ptr + pid_fh * n_global * D, dvg_ptr + pid_fh * n_global * D, q_base, do_base,
                             sq_l, sq_d, sdo_l, sdo_d, lse_base, delta_base, L, D, sm_scale, offs_d, d_mask,
                             0, n_global, BLOCK_M, BLOCK_P, BLOCK_D, PRECISION, UPCAST)
        else:
            if HAS_SUMMARY:  # one key: row-wise products instead of padded tl.dots
                qk_scale = sm_scale * 1.4426950408889634
                ks = tl.load(ks_ptr + f * sks_f + h * sks_h + offs_d * sks_d, mask=d_mask, other=0.0).to(tl.float32)
                vs = tl.load(vs_ptr + f * svs_f + h * svs_h + offs_d * svs_d, mask=d_mask, other=0.0).to(tl.float32)
                dk = tl.zeros([BLOCK_D], dtype=tl.float32)
                dv = tl.zeros([BLOCK_D], dtype=tl.float32)
                for start_m in range(0, L, BLOCK_M):
                    offs_m = start_m + tl.arange(0, BLOCK_M)
                    m_mask = offs_m < L
                    md_mask = m_mask[:, None] & d_mask[None, :]
                    q = tl.load(q_base + offs_m[:, None] * sq_l + offs_d[None, :] * sq_d, mask=md_mask,
                                other=0.0).to(tl.float32)
                    do = tl.load(do_base + offs_m[:, None] * sdo_l + offs_d[None, :] * sdo_d, mask=md_mask,
                                 other=0.0).to(tl.float32)
                    lse2 = tl.load(lse_base + offs_m, mask=m_mask, other=0.0) * 1.4426950408889634
                    delta = tl.load(delta_base + offs_m, mask=m_mask, other=0.0)
                    p = tl.where(m_mask, tl.exp2(tl.sum(q * ks[None, :], 1) * qk_scale - lse2), 0.0)
                    ds = p * (tl.sum(do * vs[None, :], 1) - delta)
                    dk += tl.sum(ds[:, None] * q, 0)
                    dv += tl.sum(p[:, None] * do, 0)
                tl.store(dks_ptr + pid_fh * D + offs_d, (dk * sm_scale).to(dks_ptr.dtype.element_ty), mask=d_mask)
                tl.store(dvs_ptr + pid_fh * D + offs_d, dv.to(dvs_ptr.dtype.element_ty), mask=d_mask)


# -- launchers ---------------------------------------------------------------------------------

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_NAMES = ("q", "k", "v", "k_local", "v_local", "k_global", "v_global", "k_summary", "v_summary")


def _check_launch(tensors: dict) -> None:
    """What the Triton kernels need beyond :func:`check_inputs`."""
    if triton is None:
        raise RuntimeError("prompt_attention: the Triton kernels need the `triton` package")
    q = tensors["q"]
    if q.dtype not in _KERNEL_DTYPES:
        raise ValueError(f"prompt_attention: the Triton kernels take float16, bfloat16 or float32, q is {q.dtype}")
    for name, t in tensors.items():
        if t is None:
            continue
        if t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"prompt_attention: {name} is {t.dtype} on {t.device}, q is {q.dtype} on {q.device}")
    if not _launch.accepts(q.device):
        raise ValueError(f"prompt_attention: the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1), "
                         f"q is on {q.device}")
    if q.shape[-1] > 128:
        raise ValueError(f"prompt_attention: head_dim must be <= 128 for the Triton kernels, q is {tuple(q.shape)}")


# The config space of each kernel: (BLOCK_M, BLOCK_N, num_warps, num_stages) candidates keyed on
# (kernel, dots, head-dim tile <= 64), dots "ieee" (float32 on FMA units), "tf32" (float32 on tensor
# cores) or "16-bit". Every one is compiled for sm_90 by ``_aot`` (tests/kernels/test_kernels_aot.py
# checks shared memory, spills and the 255-register cap). The first of each list is the launchers'
# default, chosen from those numbers without a GPU to time them: the largest tiles that keep >= 12
# warps resident per SM (by registers and shared memory) below the register cap; the others are
# larger-tile or higher-occupancy alternatives for ``VITA_CLIP_AUTOTUNE=1``.
_CONFIG_SPACE = {
    ("fwd", "ieee", True): [(16, 32, 4, 2), (32, 32, 8, 2), (64, 32, 8, 2)],
    ("fwd", "tf32", True): [(32, 32, 4, 2), (64, 32, 4, 2), (64, 64, 8, 2)],
    ("fwd", "16-bit", True): [(64, 64, 4, 3), (128, 64, 8, 3), (64, 32, 4, 3)],
    ("dq", "ieee", True): [(16, 16, 4, 2), (32, 16, 4, 2), (32, 32, 8, 2)],
    ("dq", "tf32", True): [(32, 32, 4, 2), (16, 16, 4, 2), (64, 32, 4, 2)],
    ("dq", "16-bit", True): [(64, 32, 4, 2), (32, 32, 4, 2), (64, 64, 8, 2)],
    ("dkdv", "ieee", True): [(32, 32, 8, 2), (16, 16, 4, 2), (16, 32, 4, 2)],
    ("dkdv", "tf32", True): [(32, 32, 4, 2), (64, 32, 4, 2), (32, 64, 4, 2)],
    ("dkdv", "16-bit", True): [(64, 32, 4, 2), (32, 64, 4, 2), (64, 64, 8, 2)],
    ("fwd", "ieee", False): [(16, 16, 4, 2)],  # (16, 32): 255 registers with 32-wide prompt tiles
    ("fwd", "tf32", False): [(32, 32, 4, 2), (64, 32, 8, 2)],
    ("fwd", "16-bit", False): [(64, 32, 8, 3), (64, 64, 8, 3), (32, 32, 4, 3)],
    ("dq", "ieee", False): [(16, 16, 4, 2), (16, 16, 8, 2)],
    ("dq", "tf32", False): [(16, 16, 4, 2), (32, 32, 8, 2)],
    ("dq", "16-bit", False): [(32, 32, 8, 2), (16, 32, 4, 2)],
    ("dkdv", "ieee", False): [(16, 16, 4, 2)],
    ("dkdv", "tf32", False): [(16, 16, 4, 2), (32, 32, 4, 2)],
    ("dkdv", "16-bit", False): [(32, 32, 8, 2), (32, 32, 4, 2), (32, 64, 8, 2)],
}


def _launch_configs(kernel: str, q: Tensor, n_local: int, n_global: int) -> list[dict]:
    """The candidate launch configs of ``kernel`` ("fwd", "dq" or "dkdv") for q's shape and dtype and
    torch's float32 matmul setting, the default first: the entries of ``_CONFIG_SPACE`` with tiles
    capped at the token (BLOCK_M, BLOCK_N) and prompt (BLOCK_P) counts, power-of-two >= 16 (tl.dot's
    smallest); head dims pad to a power of two."""
    tokens, dim = q.shape[2], q.shape[3]
    block_d = max(16, triton.next_power_of_2(dim))
    precision = _launch.fp32_dot_precision() if q.dtype == torch.float32 else "tf32"  # ignored by 16-bit dots
    dots = precision if q.dtype == torch.float32 else "16-bit"
    fit = max(16, triton.next_power_of_2(tokens))
    prompts = max(16, triton.next_power_of_2(max(n_local, n_global, 1)))
    configs = []
    for block_m, block_n, num_warps, num_stages in _CONFIG_SPACE[(kernel, dots, block_d <= 64)]:
        block_n = min(block_n, fit)
        config = dict(BLOCK_M=min(block_m, fit), BLOCK_N=block_n, BLOCK_P=min(block_n, prompts), BLOCK_D=block_d,
                      PRECISION=precision, UPCAST=_launch.upcast_loads(q.dtype), num_warps=num_warps,
                      num_stages=num_stages)
        if config not in configs:
            configs.append(config)
    return configs


def _tuning_key(q: Tensor, sizes: dict) -> tuple:
    """What :func:`_launch.launch_tuned` keeps one choice per: the shape (tokens, head dim, prompt
    counts, sources), dtype and float32 dot precision."""
    return (q.shape[2], q.shape[3], q.dtype, _launch.fp32_dot_precision(), sizes["n_local"], sizes["n_global"],
            sizes["HAS_LOCAL"], sizes["HAS_GLOBAL"], sizes["HAS_SUMMARY"])


def _source_args(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary) -> tuple[list, list, dict]:
    """Pointer arguments (absent sources replaced by q, never read), their strides and the source flags."""
    frames, heads = q.shape[:2]
    has_local = k_local is not None and k_local.shape[2] > 0
    has_global = k_global is not None and k_global.shape[1] > 0
    has_summary = k_summary is not None
    ptrs = [q, k, v, k_local if has_local else q, v_local if has_local else q, k_global if has_global else q,
            v_global if has_global else q, k_summary if has_summary else q, v_summary if has_summary else q]
    strides = [*q.stride(), *k.stride(), *v.stride(),
               *(k_local.stride() if has_local else (0,) * 4), *(v_local.stride() if has_local else (0,) * 4),
               *(k_global.stride() if has_global else (0,) * 3), *(v_global.stride() if has_global else (0,) * 3),
               *(k_summary.stride() if has_summary else (0,) * 3), *(v_summary.stride() if has_summary else (0,) * 3)]
    n_local = k_local.shape[2] if has_local else 0
    n_global = k_global.shape[1] if has_global else 0
    sizes = dict(frames_per_video=frames // k_local.shape[0] if has_local else 1, n_local=n_local,
                 n_global=n_global, HAS_LOCAL=has_local, HAS_GLOBAL=has_global, HAS_SUMMARY=has_summary)
    return ptrs, strides, sizes


def prompt_attention_forward(q: Tensor, k: Tensor, v: Tensor, k_local: Tensor | None = None,
                             v_local: Tensor | None = None, k_global: Tensor | None = None,
                             v_global: Tensor | None = None, k_summary: Tensor | None = None,
                             v_summary: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Triton forward: ``(out (F, H, L, d) in q's dtype, lse (F, H, L) float32 contiguous)``.

    Shapes as in the module docstring; inputs in any strides; ``out`` has the strides of a
    contiguous (F, L, H, d). One kernel launch.
    """
    sources = (q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary)
    check_inputs(*sources)
    _check_launch(dict(zip(_NAMES, sources)))
    frames, heads, tokens, dim = q.shape
    out = _launch.empty((frames, tokens, heads, dim), q.dtype, q.device).transpose(1, 2)  # out_proj's layout
    lse = _launch.empty((frames, heads, tokens), torch.float32, q.device)
    if out.numel() == 0:
        return out, lse
    ptrs, strides, sizes = _source_args(*sources)
    configs = _launch_configs("fwd", q, sizes["n_local"], sizes["n_global"])
    with _launch.device_of(q):
        _launch.launch_tuned(_prompt_attention_fwd_kernel, lambda c: (frames * heads, triton.cdiv(tokens, c["BLOCK_M"])),
                             configs, _tuning_key(q, sizes), *ptrs, out, lse, *strides, *out.stride()[:3], heads,
                             tokens, dim, sm_scale=1.0 / math.sqrt(dim), **sizes)
    return out, lse


def prompt_attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, k_local: Tensor | None,
                              v_local: Tensor | None, k_global: Tensor | None, v_global: Tensor | None,
                              k_summary: Tensor | None, v_summary: Tensor | None, out: Tensor,
                              lse: Tensor) -> list[Tensor | None]:
    """Triton backward: gradients of the nine inputs (``None`` for absent sources), contiguous.
    ``grad_out`` and ``out`` in any strides (autograd hands ``grad_out`` in out's layout, read as is).

    Two kernel launches (dq + delta, then dk/dv of every source) and, for local and global
    prompts, a float32 sum of the per-frame partial gradients (over the frames of each video,
    resp. over all frames) done by torch.
    """
    sources = (q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary)
    check_inputs(*sources)
    _check_launch(dict(zip(_NAMES, sources)) | {"grad_out": grad_out, "out": out})
    if grad_out.shape != q.shape or out.shape != q.shape:
        raise ValueError(f"prompt_attention: grad_out {tuple(grad_out.shape)} and out {tuple(out.shape)} must "
                         f"match q {tuple(q.shape)}")
    if lse.shape != q.shape[:3] or lse.dtype != torch.float32 or lse.device != q.device:
        raise ValueError(f"prompt_attention: lse must be {tuple(q.shape[:3])} float32 on {q.device}, "
                         f"got {tuple(lse.shape)} {lse.dtype} on {lse.device}")
    if q.numel() == 0:  # no queries (or no frames): nothing depends on the inputs
        return [torch.zeros_like(t, memory_format=torch.contiguous_format) if t is not None else None
                for t in sources]
    frames, heads, tokens, dim = q.shape
    device = q.device
    ptrs, strides, sizes = _source_args(*sources)
    n_local, n_global = sizes["n_local"], sizes["n_global"]
    dq, dk, dv = (_launch.empty(q.shape, q.dtype, device) for _ in range(3))
    dkl_part, dvl_part = (_launch.empty((frames, heads, n_local, dim), torch.float32, device) for _ in range(2))
    dkg_part, dvg_part = (_launch.empty((frames, heads, n_global, dim), torch.float32, device) for _ in range(2))
    dks, dvs = (_launch.empty((frames, heads, dim), q.dtype, device) for _ in range(2))
    lse = lse.contiguous()
    delta = _launch.empty((frames, heads, tokens), torch.float32, device)
    sm_scale, key = 1.0 / math.sqrt(dim), _tuning_key(q, sizes)
    with _launch.device_of(q):
        _launch.launch_tuned(_prompt_attention_bwd_dq_kernel,
                             lambda c: (frames * heads, triton.cdiv(tokens, c["BLOCK_M"])),
                             _launch_configs("dq", q, n_local, n_global), key, *ptrs, out, grad_out, lse, delta, dq,
                             *strides, *out.stride(), *grad_out.stride(), heads, tokens, dim, sm_scale=sm_scale,
                             **sizes)
        _launch.launch_tuned(_prompt_attention_bwd_dkdv_kernel,
                             lambda c: (frames * heads, triton.cdiv(tokens, c["BLOCK_N"]) + 3),
                             _launch_configs("dkdv", q, n_local, n_global), key, *ptrs, grad_out, lse, delta, dk, dv,
                             dkl_part, dvl_part, dkg_part, dvg_part, dks, dvs, *strides, *grad_out.stride(), heads,
                             tokens, dim, sm_scale=sm_scale, **sizes)
    grads = [dq, dk, dv, None, None, None, None, None, None]
    if k_local is not None:
        videos = k_local.shape[0]
        grads[3:5] = [part.view(videos, frames // videos, heads, n_local, dim).sum(1).to(q.dtype)
                      for part in (dkl_part, dvl_part)]
    if k_global is not None:
        grads[5:7] = [part.sum(0).to(q.dtype) for part in (dkg_part, dvg_part)]
    if k_summary is not None:
        grads[7:9] = [dks, dvs]
    return grads


# -- custom ops --------------------------------------------------------------------------------


@torch.library.custom_op("vita_clip::prompt_attention", mutates_args=())
def prompt_attention_op(q: Tensor, k: Tensor, v: Tensor, k_local: Tensor | None, v_local: Tensor | None,
                        k_global: Tensor | None, v_global: Tensor | None, k_summary: Tensor | None,
                        v_summary: Tensor | None) -> tuple[Tensor, Tensor]:
    return _composite_op(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary)


def in_out_proj_layout(out: Tensor) -> Tensor:
    """``out`` (F, H, L, d) with the strides of a contiguous (F, L, H, d), the layout every
    implementation of the op returns: ``out.transpose(1, 2).reshape(F, L, H * d)``, what
    ``out_proj`` reads, is then a view. Copies only when ``out`` is laid out otherwise."""
    if out.transpose(1, 2).is_contiguous():
        return out
    return out.transpose(1, 2).contiguous().transpose(1, 2)


def _composite_op(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary):
    """The composite as the op returns it (checked inputs, the op's output layouts): every
    device's fallback. torch's CPU flash attention already writes q's (F, L, H, d) layout when q
    is a view of a packed projection, as in the models: no copy then."""
    check_inputs(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary)
    out, lse = _composite_forward(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary)
    return in_out_proj_layout(out), lse.contiguous()


@prompt_attention_op.register_fake
def _(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary):
    frames, heads, tokens, dim = q.shape
    return (q.new_empty((frames, tokens, heads, dim)).transpose(1, 2),
            q.new_empty(q.shape[:3], dtype=lse_dtype(q.dtype)))


if triton is not None:

    @prompt_attention_op.register_kernel("cuda")
    def _(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary):
        if q.dtype == torch.float64:  # no float64 tile path: the composite
            return _composite_op(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary)
        return prompt_attention_forward(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary)


@prompt_attention_op.register_kernel("cpu")
def _(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary):
    if _cpu_extension.use_cpp(q.dtype):  # the C++ kernel (csrc/), when selected and built
        check_inputs(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary)
        out, lse = torch.ops.vita_clip_cpu.prompt_attention_fwd(q, k, v, k_local, v_local, k_global, v_global,
                                                                k_summary, v_summary)
        return in_out_proj_layout(out), lse  # it writes (F, H, L, d): one copy, the one out_proj's input needed
    return _composite_op(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary)


@torch.library.custom_op("vita_clip::prompt_attention_backward", mutates_args=())
def prompt_attention_backward_op(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, k_local: Tensor | None,
                                 v_local: Tensor | None, k_global: Tensor | None, v_global: Tensor | None,
                                 k_summary: Tensor | None, v_summary: Tensor | None, out: Tensor,
                                 lse: Tensor) -> list[Tensor]:
    return _composite_backward_op(grad_out, q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary,
                                  out, lse)


def _composite_backward_op(grad_out, q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary, out, lse):
    """The composite backward as the op returns it: every device's fallback."""
    grads = _composite_backward(grad_out, q, k, v, k_local, v_local, k_global, v_global,
                                k_summary, v_summary, out, lse)
    return _op_grads(grads, q)


def _op_grads(grads, q):
    # custom ops cannot return None: absent sources get empty tensors, dropped again in backward
    return [g.contiguous() if g is not None else q.new_empty(0) for g in grads]


@prompt_attention_backward_op.register_fake
def _(grad_out, q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary, out, lse):
    sources = (q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary)
    return [torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None else q.new_empty(0)
            for t in sources]


if triton is not None:

    @prompt_attention_backward_op.register_kernel("cuda")
    def _(grad_out, q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary, out, lse):
        if q.dtype == torch.float64:
            return _composite_backward_op(grad_out, q, k, v, k_local, v_local, k_global, v_global, k_summary,
                                          v_summary, out, lse)
        return _op_grads(prompt_attention_backward(grad_out, q, k, v, k_local, v_local, k_global, v_global,
                                                   k_summary, v_summary, out, lse), q)


@prompt_attention_backward_op.register_kernel("cpu")
def _(grad_out, q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary, out, lse):
    if _cpu_extension.use_cpp(q.dtype):  # absent sources come back as empty tensors
        return torch.ops.vita_clip_cpu.prompt_attention_bwd(grad_out, q, k, v, k_local, v_local, k_global, v_global,
                                                            k_summary, v_summary, out, lse)
    return _composite_backward_op(grad_out, q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary,
                                  out, lse)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output)
    ctx.present = [t is not None for t in inputs]


def _backward(ctx, grad_out, grad_lse):
    q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary, out, lse = ctx.saved_tensors
    grads = prompt_attention_backward_op(grad_out, q, k, v, k_local, v_local, k_global, v_global,
                                         k_summary, v_summary, out, lse)
    return tuple(g if present else None for g, present in zip(grads, ctx.present))


prompt_attention_op.register_autograd(_backward, setup_context=_setup_context)

# Mixed precision: under autocast the op runs in the autocast dtype, like torch's own attention
# (scaled_dot_product_attention is on autocast's lower-precision list): floating inputs other than
# float64 are cast to the dtype autocast runs in at the call (torch.library.register_autocast
# would fix one dtype at registration), which is a no-op for the fused model, whose q/k/v and
# prompt projections come out of autocast linears; autograd through the casts returns each input's
# gradient in its own dtype. Outside autocast all inputs must share one dtype (check_inputs).
_autocast_lib = torch.library.Library("vita_clip", "FRAGMENT")


def _register_autocast(device_type: str) -> None:
    def kernel(_keyset, *args):
        dtype = torch.get_autocast_dtype(device_type)
        cast = [a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() and a.dtype != torch.float64
                and a.device.type == device_type else a for a in args]
        with torch.autocast(device_type, enabled=False):  # dispatches below the autocast key
            return prompt_attention_op._opoverload(*cast)

    _autocast_lib.impl("prompt_attention", kernel, "Autocast" + torch._C._dispatch_key_for_device(device_type),
                       with_keyset=True)


for _device_type in ("cpu", "cuda"):
    _register_autocast(_device_type)


def prompt_attention(q: Tensor, k: Tensor, v: Tensor, k_local: Tensor | None = None, v_local: Tensor | None = None,
                     k_global: Tensor | None = None, v_global: Tensor | None = None,
                     k_summary: Tensor | None = None, v_summary: Tensor | None = None) -> Tensor:
    """Attention of each frame's tokens over its own and the prompt keys/values: ``(F, H, L, d)``
    with the strides of a contiguous (F, L, H, d), so ``out.transpose(1, 2).reshape(F, L, H * d)``
    is a view.

    See the module docstring for the shapes. Differentiable with respect to every tensor.
    """
    return prompt_attention_op(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary)[0]
