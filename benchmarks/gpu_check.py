"""``make gpu-check``: every CUDA test and the GPU benchmarks in one command, one markdown report.

1. the CUDA tests: ``pytest tests -k "cuda or gpu"`` (on a machine with a GPU ``conftest.py``
   leaves ``TRITON_INTERPRET`` unset, so the parametrised kernel tests take their CUDA cases and
   the ``*_gpu`` / ``*_on_cuda`` tests run);
2. the GPU benchmarks: ``benchmarks/test_gpu.py`` (attention vs SDPA at 197/214/257 tokens, ViT-B/16
   inference batch 1/8/32, a training step, the summary attention op vs its eager module, bfloat16)
   and the CUDA cases of ``benchmarks/test_model_forward.py``;
3. writes ``benchmarks/results/gpu_check.md`` (``--out``): device, versions, test summary and the
   benchmark tables with their ratios.

Budget: about 8 minutes on an H100 (each step has a timeout; a step over it is reported as such).
Without a CUDA device it prints why and exits 0 (``--require-gpu``: exits 1 instead).
"""
from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(command: list[str], timeout: float, env: dict | None = None) -> tuple[int | str, str, float]:
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        return done.returncode, done.stdout + done.stderr, time.perf_counter() - started
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return f"timed out after {timeout:.0f} s", out, time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.md")
    parser.add_argument("--require-gpu", action="store_true", help="exit 1 (not 0) when there is no CUDA device")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device (torch.cuda.is_available() is False): nothing was run, no report written")
        return 1 if args.require_gpu else 0
    python = sys.executable
    bench_dir = ROOT / "benchmarks" / "results" / "gpu_check"
    steps = [
        ("CUDA tests", [python, "-m", "pytest", "tests", "-q", "-k", "cuda or gpu", "-p", "no:cacheprovider"], 240, {}),
        ("GPU benchmarks", [python, "-m", "pytest", "benchmarks/test_gpu.py", "benchmarks/test_model_forward.py",
                            "-k", "cuda or test_gpu", "--benchmark-only", "-q", "-p",
                            "no:cacheprovider"], 300,
         {"VITA_BENCH_RESULTS": str(bench_dir), "VITA_BENCH_BATCH4": "0"}),
    ]
    lines = [f"# gpu-check, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", "",
             f"- device: {torch.cuda.get_device_name()} "
             f"(capability {'.'.join(map(str, torch.cuda.get_device_capability()))})",
             f"- torch {torch.__version__}, CUDA {torch.version.cuda}"]
    try:
        import triton
        lines.append(f"- triton {triton.__version__}")
    except ImportError:
        lines.append("- triton: not installed (the Triton kernels cannot run)")
    failed = False
    for title, command, timeout, env in steps:
        status, output, seconds = run(command, timeout, env)
        failed |= status != 0
        summary = [line for line in output.splitlines() if " passed" in line or " failed" in line or "error" in line]
        lines += ["", f"## {title}: {'ok' if status == 0 else f'FAILED ({status})'} in {seconds:.0f} s", "",
                  f"`{' '.join(Path(c).name if c == python else c for c in command)}`", ""]
        lines += [f"    {summary[-1] if summary else '(no pytest summary)'}"]
        if status != 0:
            lines += ["", "```", *output.splitlines()[-60:], "```"]
    tables = bench_dir / "latest.md"
    if tables.exists():
        lines += ["", "## Benchmark tables", "", tables.read_text()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"gpu-check: report written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
