"""``--precision``: the names, what ``auto`` becomes on each device, and the autocast of each."""
from __future__ import annotations

import warnings

import pytest
import torch

from vita_clip import precision


@pytest.mark.parametrize("native,expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_a_cpu_is_bf16_only_with_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert precision.resolve_precision("auto", "cpu") == expected
    assert precision.resolve_precision("auto", torch.device("cpu")) == expected


@pytest.mark.parametrize("supported,expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_is_bf16_where_supported_else_fp16(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert precision.resolve_precision("auto", torch.device("cuda", 0)) == expected


@pytest.mark.parametrize("name", ["fp32", "bf16", "fp16"])
def test_explicit_precisions_are_kept(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert precision.resolve_precision(name, "cpu") == name
        assert precision.resolve_precision(name, "cuda") == name


def test_fp16_on_a_cpu_warns_that_it_is_slow():
    with pytest.warns(RuntimeWarning, match="fp16 on a CPU is several times slower"):
        precision.resolve_precision("fp16", "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.resolve_precision("bf16", "cpu")


@pytest.mark.parametrize("bad", ["int8", "FP32", "", "float32"])
def test_a_bad_value_names_the_flag_and_the_choices(bad):
    with pytest.raises(ValueError, match=r"--precision must be one of auto, fp32, bf16, fp16, got"):
        precision.resolve_precision(bad, "cpu")


def test_autocast_of_each_resolved_precision():
    x = torch.randn(4, 8)
    w = torch.randn(3, 8)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with precision.autocast("cpu", name):
            assert torch.is_autocast_enabled("cpu") == (name != "fp32")
            assert torch.nn.functional.linear(x, w).dtype == dtype
    with pytest.raises(ValueError, match="resolved precision"):
        precision.autocast("cpu", "auto")
