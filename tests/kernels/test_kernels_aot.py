"""Every Triton kernel compiles ahead of time for sm_90 (H100/H200) at the specialisations the
launchers choose, without a GPU (``vita_clip.kernels._aot``; Triton ships ptxas).

The compile runs in a subprocess without ``TRITON_INTERPRET`` (``conftest.py`` sets it for this
process, and interpreted kernels cannot be compiled). By default: ViT-B/16 (768 wide, 12 heads,
197 tokens) and ViT-L/14 (1024, 16 heads, 257 tokens) with 8-frame clips, in float32 (IEEE and
TF32 dots), bfloat16 and float16 under autocast (float32 summary parameters), the prompt-attention
kernels in every config of their space: about 90 specialisations, ~3.5 min of CPU with an empty
Triton cache. ``VITA_CLIP_AOT_FULL=1`` adds 16-frame clips and the largest shapes the launchers
admit (several more minutes on 2 cores).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from vita_clip.kernels import _launch
from vita_clip.kernels import summary_attention as sa

triton = pytest.importorskip("triton")
FULL = os.environ.get("VITA_CLIP_AOT_FULL", "0") == "1"


def test_every_kernel_compiles_for_sm90_within_its_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "vita_clip.kernels._aot", "--arch", "90"] + (["--full", "--limits"] if FULL
                                                                                   else [])
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    print(result.stdout)  # registers and spills of every specialisation (shown with -s or on failure)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    for kernel in ("_prompt_attention_fwd_kernel", "_prompt_attention_bwd_dq_kernel",
                   "_prompt_attention_bwd_dkdv_kernel", "_frame_attention_fwd_kernel",
                   "_frame_attention_bwd_kernel"):
        for precision in ("fp32]", "fp32-tf32]", "bf16-autocast]", "fp16-autocast]"):
            assert any(line.startswith(kernel) and precision in line and line.endswith(" ok") for line in lines), \
                (kernel, precision)
    assert "0 failed" in lines[-1]
    check_prompt_attention_config_space(lines)


def check_prompt_attention_config_space(lines):
    """Every config of the prompt-attention kernels' space was compiled (counted at the first
    case, where none is shared with an earlier one), and none spills or sits at the 255-register
    cap (where ptxas starts trading registers for recomputation and local memory)."""
    from vita_clip.kernels import prompt_attention as pa

    dots = {"fp32]": "ieee", "fp32-tf32]": "tf32", "bf16-autocast]": "16-bit", "fp16-autocast]": "16-bit"}
    for kernel in ("fwd", "dq", "dkdv"):
        name = {"fwd": "_prompt_attention_fwd_kernel", "dq": "_prompt_attention_bwd_dq_kernel",
                "dkdv": "_prompt_attention_bwd_dkdv_kernel"}[kernel]
        for precision, dot in dots.items():
            compiled = [line for line in lines if line.startswith(f"{name} [ViT-B/16 8f {precision}")]
            assert len(compiled) == len(pa._CONFIG_SPACE[(kernel, dot, True)]), (kernel, precision, compiled)
    for line in lines:
        if line.startswith("_prompt_attention_"):
            registers, spills = map(int, re.search(r"(\d+) regs, spills (\d+) B", line).groups())
            assert spills == 0 and registers < 255, line


@pytest.mark.skipif(not _launch.interpreting() and not torch.cuda.is_available(), reason="needs a launcher device")
def test_summary_launcher_refuses_tiles_beyond_what_compiles_for_sm90():
    """The largest tiles the summary launchers admit, 64 frames x head dim 128, compile within an
    sm_90 CTA (the TF32 backward needs 224 of its 227 KB of shared memory: the compile above with
    ``--limits``); more frames or wider heads are refused before any launch."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    width = 1024
    weights = [torch.ones(width, device=device), torch.zeros(width, device=device)]
    weights += [torch.zeros(width, width, device=device), torch.zeros(width, device=device)] * 4
    with pytest.raises(ValueError, match="at most 64 frames and 128 dims per head"):
        sa.summary_attention_forward(torch.zeros(1, 65, width, device=device), *weights, 8)
    with pytest.raises(ValueError, match="at most 64 frames and 128 dims per head"):
        sa.summary_attention_forward(torch.zeros(1, 3, width, device=device), *weights, 4)  # head dim 256
    with _launch.record_launches() as launches:  # the limit itself is admitted
        sa.summary_attention_forward(torch.zeros(1, 64, width, device=device), *weights, 8)
    assert [kwargs["BLOCK_T"] * kwargs["BLOCK_HD"] for _, _, _, kwargs in launches] == [64 * 128]
