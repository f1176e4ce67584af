"""Compile every Triton kernel ahead of time for a GPU architecture, on a machine without a GPU.

``python -m vita_clip.kernels._aot [--arch 90] [--full]`` calls the real launchers (forward and
backward of both ops) with CPU tensors laid out as ``VitaVisionTransformer.fused_layer`` passes
them, for ViT-B/16 (width 768, 12 heads, 197 tokens) and ViT-L/14 (1024, 16 heads, 257 tokens),
in every dtype the fused model runs in (float32 with IEEE and with TF32 dots, bfloat16 and
float16 activations with float32 summary parameters, as under autocast). The launches are
recorded instead of run (``_launch.record_launches``), and each distinct specialisation is
compiled with Triton for ``GPUTarget("cuda", arch, 32)``: the signature, constexprs and
alignment/divisibility attributes come from Triton's own argument binder for that target, so
they are the ones a launch on such a GPU would compile. Triton ships ``ptxas``; nothing runs.

Fails (exit status 1) on a compile error, or when a kernel needs more shared memory than a CTA
of the target has. Registers per thread and local-memory bytes (register spills) come from
``cuobjdump --dump-resource-usage`` of the cubin: Triton reads ``n_regs``/``n_spills`` from the
driver when it loads a kernel, which needs a GPU. ``--full`` adds 16-frame clips (8 by default).

Must run without ``TRITON_INTERPRET`` (under the interpreter ``triton.jit`` gives interpreted
functions, which cannot be compiled). Uses Triton internals (``create_function_from_signature``,
``JITFunction._pack_args``) that track the pinned Triton version.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time

import torch

from . import _launch
from . import prompt_attention as pa
from . import summary_attention as sa

# Largest dynamic shared memory one CTA may use (cudaDevAttrMaxSharedMemoryPerBlockOptin), bytes
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024}

MODELS = {  # name: (width, heads, tokens per frame)
    "ViT-B/16": (768, 12, 197),
    "ViT-L/14": (1024, 16, 257),
}
GLOBAL_PROMPTS = 8  # the Vita-CLIP default
VIDEOS = 2

# (name, activation dtype, summary parameter dtype, float32 dot precision)
PRECISIONS = [
    ("fp32", torch.float32, torch.float32, "ieee"),
    ("fp32-tf32", torch.float32, torch.float32, "tf32"),
    ("bf16-autocast", torch.bfloat16, torch.float32, "ieee"),
    ("fp16-autocast", torch.float16, torch.float32, "ieee"),
]


@dataclasses.dataclass
class Result:
    kernel: str
    case: str  # the first (model, frames, precision) that led to this specialisation
    num_warps: int
    num_stages: int
    constexprs: str
    shared_bytes: int | None = None
    registers: int | None = None
    spill_bytes: int | None = None  # local memory per thread
    seconds: float = 0.0
    error: str = ""


def fused_layer_inputs(width, heads, tokens, frames, dtype):
    """q/k/v and prompt keys/values as the strided views ``fused_layer`` passes, plus the
    summary token input; uninitialised CPU tensors (only shapes, strides and dtypes matter)."""
    head_dim, f = width // heads, VIDEOS * frames
    qkv = torch.empty(f, tokens, 3, heads, head_dim, dtype=dtype)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    local = torch.empty(VIDEOS, frames, 2, heads, head_dim, dtype=dtype)
    k_local, v_local = (local.select(2, i).transpose(1, 2) for i in range(2))
    glob = torch.empty(GLOBAL_PROMPTS, 2, heads, head_dim, dtype=dtype)
    k_global, v_global = (glob.select(1, i).transpose(0, 1) for i in range(2))
    summary = torch.empty(f, 2, heads, head_dim, dtype=dtype)
    k_summary, v_summary = summary.select(1, 0), summary.select(1, 1)
    return (q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary), torch.empty(VIDEOS, frames, width,
                                                                                              dtype=dtype)


def record(width, heads, tokens, frames, dtype, param_dtype, precision, refused: list) -> list:
    """The launches of both ops' forward and backward at one shape and precision; the messages
    of launchers that refuse the shape are appended to ``refused``."""
    sources, c = fused_layer_inputs(width, heads, tokens, frames, dtype)
    f = VIDEOS * frames
    # the gradient autograd hands the op: out_proj's input gradient (F, L, D) seen as (F, H, L, d)
    grad_out = torch.empty(f, tokens, heads, width // heads, dtype=dtype).transpose(1, 2)
    weights = [torch.empty(width, dtype=param_dtype), torch.empty(width, dtype=param_dtype)]
    for _ in range(4):
        weights += [torch.empty(width, width, dtype=param_dtype), torch.empty(width, dtype=param_dtype)]
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    matmul.fp32_precision = precision
    try:
        with _launch.record_launches() as launches:
            try:  # a shape a launcher refuses is not compiled: its limits decide
                out, lse = pa.prompt_attention_forward(*sources)
                pa.prompt_attention_backward(grad_out, *sources, out, lse)
            except ValueError as e:
                refused.append(str(e))
            try:
                sa.summary_attention_forward(c, *weights, heads)
                sa.summary_attention_backward(torch.empty_like(c), c, *weights, heads)
            except ValueError as e:
                refused.append(str(e))
    finally:
        matmul.fp32_precision = before
    return launches


def _specialisation(kernel, backend, args, kwargs):
    """What ``JITFunction.run`` computes before compiling: options, signature, constexprs, attrs."""
    from triton import knobs
    from triton.runtime.jit import create_function_from_signature

    kwargs = dict(kwargs, debug=kernel.debug or knobs.runtime.debug,
                  instrumentation_mode=knobs.compilation.instrumentation_mode)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    return kernel._pack_args(backend, kwargs, bound_args, specialization, options)


def _resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers per thread, local memory bytes per thread) of a cubin, via cuobjdump."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    regs, local = re.search(r"REG:(\d+)", text), re.search(r"LOCAL:(\d+)", text)
    return (int(regs.group(1)) if regs else None), (int(local.group(1)) if local else None)


def model_cases(frames_list=(8,), models=tuple(MODELS)) -> list[tuple]:
    """(label, width, heads, tokens, frames) of the ViT shapes."""
    return [(f"{m} {f}f", *MODELS[m], f) for m in models for f in frames_list]


# The largest shapes the launchers admit: what their limits must be checked against.
LIMIT_CASES = [
    ("limit: head dim 128, 64 frames", 1024, 8, 257, 64),
]


def compile_all(arch: int = 90, cases=None, precisions=None, log=print) -> list[Result]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction

    if not isinstance(pa._prompt_attention_fwd_kernel, JITFunction):
        raise RuntimeError("vita_clip.kernels._aot: the kernels are interpreted (TRITON_INTERPRET is set); "
                           "run it without TRITON_INTERPRET")
    cases = model_cases() if cases is None else cases
    precisions = PRECISIONS if precisions is None else precisions
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    seen: dict = {}
    results: list[Result] = []
    for label, width, heads, tokens, frames in cases:
        for name, dtype, param_dtype, precision in precisions:
            case = f"{label} {name}"
            refused: list[str] = []
            launches = record(width, heads, tokens, frames, dtype, param_dtype, precision, refused)
            for message in refused:
                log(f"[{case}] refused by the launcher: {message}")
            for kernel, _grid, args, kwargs in launches:
                options, signature, constexprs, attrs = _specialisation(kernel, backend, args, kwargs)
                key = (kernel.fn.__name__, repr(sorted(signature.items())), repr(sorted(constexprs.items())),
                       repr(sorted(attrs.items())), repr(sorted(options.__dict__.items())))
                if key in seen:
                    continue
                named = {kernel.arg_names[path[0]]: value for path, value in constexprs.items()
                         if kernel.params[path[0]].is_constexpr}
                result = Result(kernel.fn.__name__, case, options.num_warps, options.num_stages,
                                " ".join(f"{k}={v}" for k, v in named.items()))
                seen[key] = result
                start = time.perf_counter()
                try:
                    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                              options=options.__dict__)
                    result.shared_bytes = compiled.metadata.shared
                    result.registers, result.spill_bytes = _resource_usage(compiled.asm["cubin"])
                except Exception as e:  # a compile error is a result: report it, go on
                    result.error = f"{e.__class__.__name__}: {str(e).strip().splitlines()[0][:300]}"
                result.seconds = time.perf_counter() - start
                limit = SHARED_MEMORY_LIMIT.get(arch)
                if not result.error and limit is not None and result.shared_bytes > limit:
                    result.error = f"needs {result.shared_bytes} B of shared memory, sm_{arch} has {limit} B"
                log(format_row(result))
                results.append(result)
    return results


def format_row(r: Result) -> str:
    usage = (f"shared {r.shared_bytes} B, {r.registers} regs, spills {r.spill_bytes} B" if r.shared_bytes is not None
             else "-")
    status = f"FAILED {r.error}" if r.error else "ok"
    return (f"{r.kernel} [{r.case}] warps={r.num_warps} stages={r.num_stages} {r.constexprs}: {usage} "
            f"({r.seconds:.1f} s) {status}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (default 90: H100/H200)")
    parser.add_argument("--full", action="store_true", help="also 16-frame clips (default: 8 frames)")
    parser.add_argument("--limits", action="store_true", help="also the largest shapes the launchers admit")
    args = parser.parse_args(argv)
    if _launch.interpreting():
        print("vita_clip.kernels._aot: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)",
              file=sys.stderr)
        return 2
    cases = model_cases((8, 16) if args.full else (8,))
    if args.limits:
        cases += LIMIT_CASES
    results = compile_all(args.arch, cases)
    failed = [r for r in results if r.error]
    spilling = [r for r in results if r.spill_bytes]
    print(f"{len(results)} specialisations compiled for sm_{args.arch}: {len(failed)} failed, "
          f"{len(spilling)} spill registers")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
