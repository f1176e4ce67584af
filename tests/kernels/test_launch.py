"""The launch helpers the Triton launchers share: the float32 dot precision they read from torch's
matmul settings, and the choice among a kernel's candidate configs (``launch_tuned``)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from vita_clip.kernels import _launch


@pytest.fixture
def matmul_precision():
    """torch's float32 precision settings (new API), restored afterwards."""
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision, torch.backends.fp32_precision
    yield matmul
    torch.backends.fp32_precision = before[1]
    matmul.fp32_precision = before[0]


def test_fp32_dot_precision_follows_torch_matmul_setting(matmul_precision):
    torch.backends.fp32_precision = "ieee"
    matmul_precision.fp32_precision = "ieee"
    assert _launch.fp32_dot_precision() == "ieee"
    matmul_precision.fp32_precision = "tf32"
    assert _launch.fp32_dot_precision() == "tf32"
    matmul_precision.fp32_precision = "none"  # inherits the global setting
    assert _launch.fp32_dot_precision() == "ieee"
    torch.backends.fp32_precision = "tf32"
    assert _launch.fp32_dot_precision() == "tf32"


LEGACY = """
import torch
from vita_clip.kernels import _launch
assert _launch.fp32_dot_precision() == "ieee"  # torch's default
torch.backends.cuda.matmul.allow_tf32 = True
assert _launch.fp32_dot_precision() == "tf32"
torch.backends.cuda.matmul.allow_tf32 = False
assert _launch.fp32_dot_precision() == "ieee"
torch.set_float32_matmul_precision("high")
assert _launch.fp32_dot_precision() == "tf32"
torch.set_float32_matmul_precision("highest")
assert _launch.fp32_dot_precision() == "ieee"
print("ok")
"""


def test_fp32_dot_precision_follows_legacy_tf32_flags():
    """In a fresh process: torch refuses to read settings after the legacy and new APIs are mixed."""
    result = subprocess.run([sys.executable, "-c", LEGACY], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


class FakeKernel:
    """Stands in for a ``triton.jit`` function: records the launches ``kernel[grid](...)`` makes."""

    class fn:
        __name__ = "fake_kernel"

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((grid, args, kwargs))


CONFIGS = [{"BLOCK": 16, "num_warps": 4}, {"BLOCK": 32, "num_warps": 4}, {"BLOCK": 64, "num_warps": 8}]


def grid(config):
    return (100 // config["BLOCK"],)


def test_launch_tuned_uses_the_default_config_unless_autotuning(monkeypatch):
    monkeypatch.setattr(_launch, "interpreting", lambda: False)  # as on CUDA
    monkeypatch.delenv("VITA_CLIP_AUTOTUNE", raising=False)
    kernel = FakeKernel()
    assert _launch.launch_tuned(kernel, grid, CONFIGS, "key", 1, x=2) == CONFIGS[0]
    assert kernel.calls == [((6,), (1,), {"x": 2, **CONFIGS[0]})]


def test_launch_tuned_records_every_config_for_aot():
    kernel = FakeKernel()
    with _launch.record_launches() as launches:
        _launch.launch_tuned(kernel, grid, CONFIGS, "key", 1)
    assert [(g, kw) for _, g, _, kw in launches] == [(grid(c), c) for c in CONFIGS] and not kernel.calls


def test_launch_tuned_autotunes_once_per_key_on_cuda(monkeypatch):
    monkeypatch.setattr(_launch, "interpreting", lambda: False)
    monkeypatch.setenv("VITA_CLIP_AUTOTUNE", "1")
    monkeypatch.setattr(_launch, "_tuned", {})
    kernel = FakeKernel()

    def fake_time_ms(fn):  # config BLOCK=32 is the fastest
        fn()
        return abs(kernel.calls[-1][2]["BLOCK"] - 32) + 1.0

    monkeypatch.setattr(_launch, "_time_ms", fake_time_ms)
    assert _launch.launch_tuned(kernel, grid, CONFIGS, "key", 1) == CONFIGS[1]
    assert len(kernel.calls) == 4  # three timed, then the launch
    assert _launch.launch_tuned(kernel, grid, CONFIGS, "key", 1) == CONFIGS[1] and len(kernel.calls) == 5
    assert _launch.launch_tuned(kernel, grid, CONFIGS, "other key", 1) == CONFIGS[1] and len(kernel.calls) == 9


def test_launch_tuned_uses_one_config_in_the_interpreter(monkeypatch):
    monkeypatch.setattr(_launch, "interpreting", lambda: True)
    monkeypatch.setenv("VITA_CLIP_AUTOTUNE", "1")
    monkeypatch.setattr(_launch, "_time_ms", lambda fn: pytest.fail("timed in the interpreter"))
    kernel = FakeKernel()
    assert _launch.launch_tuned(kernel, grid, CONFIGS, "key") == CONFIGS[0] and len(kernel.calls) == 1


def test_launch_tuned_does_not_time_inside_a_cuda_graph_capture(monkeypatch):
    monkeypatch.setattr(_launch, "interpreting", lambda: False)
    monkeypatch.setenv("VITA_CLIP_AUTOTUNE", "1")
    monkeypatch.setattr(_launch, "_tuned", {})
    monkeypatch.setattr(_launch, "_capturing", lambda: True)
    monkeypatch.setattr(_launch, "_time_ms", lambda fn: pytest.fail("timed during a capture"))
    kernel = FakeKernel()
    assert _launch.launch_tuned(kernel, grid, CONFIGS, "key") == CONFIGS[0] and not _launch._tuned
