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


@pytest.fixture
def cast_cache():
    previous = precision.set_cast_cache(True)
    yield
    precision.set_cast_cache(previous)


def test_autocast_copy_is_made_once_and_again_when_the_weight_changes(cast_cache):
    w = torch.nn.Parameter(torch.randn(5, 7), requires_grad=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = precision.autocast_copy(w)
        assert first.dtype == torch.bfloat16 and torch.equal(first, w.to(torch.bfloat16))
        assert precision.autocast_copy(w) is first
        w.mul_(3)  # in place: an optimizer step, load_state_dict
        again = precision.autocast_copy(w)
        assert again is not first and torch.equal(again, w.to(torch.bfloat16))
        w.data = torch.randn(5, 7)  # new storage
        assert torch.equal(precision.autocast_copy(w), w.to(torch.bfloat16))
    with torch.autocast("cpu", dtype=torch.float16):
        assert precision.autocast_copy(w).dtype == torch.float16
    assert precision.autocast_copy(w) is w  # autocast off


def test_autocast_copy_leaves_what_autograd_or_the_switch_needs(cast_cache):
    trainable = torch.nn.Parameter(torch.randn(3, 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert precision.autocast_copy(trainable) is trainable  # autocast records (and caches) the cast itself
        with torch.no_grad():
            assert precision.autocast_copy(trainable).dtype == torch.bfloat16
        precision.set_cast_cache(False)
        frozen = torch.randn(3, 3)
        assert precision.autocast_copy(frozen) is frozen


@pytest.mark.parametrize("shape", [(197, 64), (3, 197, 64), (1, 64)])
def test_autocast_linear_is_autocast_bit_for_bit(cast_cache, shape):
    """Cast once, and in bf16 CPU inference packed by oneDNN: F.linear's results under autocast,
    bit for bit, for float32 and bfloat16 inputs, contiguous or not, before and after the
    weight changes."""
    w, b = torch.nn.Parameter(torch.randn(96, 64), requires_grad=False), torch.randn(96)
    x = torch.randn(*shape)
    wide = torch.randn(*shape[:-1], 3 * shape[-1])[..., 5:5 + shape[-1]]  # rows with a stride
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype), torch.inference_mode():
            for _ in range(2):
                for inp in (x, x.to(dtype), wide):
                    assert torch.equal(precision.autocast_linear(inp, w, b), torch.nn.functional.linear(inp, w, b))
            w.add_(1.0)
            assert torch.equal(precision.autocast_linear(x, w, b), torch.nn.functional.linear(x, w, b))
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert precision._PACKED_ATTR in w.__dict__  # the packed path ran
