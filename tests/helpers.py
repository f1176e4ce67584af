"""Helpers the tests share (on the test path through pyproject's ``pythonpath``; never import a
test file or ``conftest``)."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vita_clip import VitaCLIP, VitaCLIPConfig
from vita_clip.checkpoints.io import load_state_dict_checked
from vita_clip.checkpoints.original import convert_vita_state_dict
from vita_clip.data import decode_dali
from vita_clip.kernels import _launch
from vita_clip.kernels import prompt_attention as _prompt_attention

# Triton tests: on the CPU under the interpreter (conftest.py sets TRITON_INTERPRET=1 without a
# GPU), on CUDA where there is one
needs_triton = pytest.mark.skipif(_prompt_attention.triton is None, reason="triton is not installed")
needs_interpreter = pytest.mark.skipif(not _launch.interpreting(),
                                       reason="needs TRITON_INTERPRET=1 (conftest.py sets it without a GPU)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TRITON_DEVICES = [pytest.param("cpu", marks=[needs_triton, needs_interpreter]),
                  pytest.param("cuda", marks=[needs_triton, needs_cuda])]


def rel_err(actual: torch.Tensor, expected: torch.Tensor, floor: float = 0.0) -> float:
    """Relative error ``|actual - expected| / max(|expected|, floor)`` in float64, on the CPU
    (``floor``: for references whose norm is about zero, e.g. an exactly-zero true gradient)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return ((actual - expected).norm() / max(expected.norm().item(), floor, 1e-30)).item()



def mixed_precision_bound(torch_err: float, dtype: torch.dtype) -> float:
    """The error allowed in ``dtype`` against a float64 reference: about twice what torch's own
    ops make in that dtype (``torch_err``), plus a quarter of the dtype's epsilon for a
    reference torch computes exactly."""
    return 2 * torch_err + 0.25 * torch.finfo(dtype).eps


def summary_weights(width: int, seed: int) -> list[torch.Tensor]:
    """Random float32 parameters of the summary attention, in the op's order (LayerNorm weight
    and bias, then weight and bias of q, k, v and out), scaled like trained ones."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g) * scale + shift

    s = width ** -0.5
    return [r(width, scale=0.1, shift=1.0), r(width, scale=0.1), r(width, width, scale=s), r(width, scale=0.1),
            r(width, width, scale=s), r(width, scale=0.1), r(width, width, scale=s), r(width, scale=0.1),
            r(width, width, scale=s), r(width, scale=0.1)]

# -- the golden outputs of the original Vita-CLIP (the ``golden`` fixture of conftest.py) ----------


def variant_state_dict(golden: dict, name: str) -> dict:
    variant = golden["variants"][name]
    return {k: variant["state_dict_delta"].get(k, golden["state_dict"][k]) for k in variant["state_dict_keys"]}


def vita_config_from_original_kwargs(kwargs: dict, backbone: str) -> dict:
    """Config fields of :class:`~vita_clip.VitaCLIPConfig` for the keyword arguments of the
    original ``VitaCLIP(...)`` constructor (its training script's arguments).

    The architecture arguments (width, layers, heads, patch and input size, text tower) must
    match the open_clip ``backbone`` config; a mismatch raises naming the argument.
    """
    import open_clip

    cfg = open_clip.get_model_config(backbone)
    if cfg is None:
        raise ValueError(f"unknown backbone {backbone!r}")
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    width = vision["width"]
    heads = width // vision.get("head_width", 64)
    image = vision["image_size"]
    expected = {
        "feature_dim": width, "num_layers": vision["layers"], "num_heads": heads, "embed_dim": cfg["embed_dim"],
        "patch_size": (vision["patch_size"],) * 2, "input_size": (image,) * 2 if isinstance(image, int) else tuple(image),
        "mlp_factor": vision.get("mlp_ratio", 4.0),
        "text_transformer_width": text["width"], "text_transformer_heads": text["heads"],
        "text_transformer_layers": text["layers"], "text_context_length": text["context_length"],
        "text_vocab_size": text["vocab_size"],
    }
    for key, value in expected.items():
        given = kwargs.get(key)
        if given is not None and (tuple(given) if isinstance(given, (list, tuple)) else given) != value:
            raise ValueError(f"original argument {key}={given!r} does not match backbone {backbone!r} ({value!r})")
    return {
        "backbone": backbone,
        "num_frames": kwargs.get("num_frames", 16),
        "use_summary_token": kwargs.get("use_summary_token", False),
        "use_local_prompts": kwargs.get("use_local_prompts", False),
        "use_global_prompts": kwargs.get("use_global_prompts", False),
        "num_global_prompts": kwargs.get("num_global_prompts", 8),
        "train_cls_proj": False,  # the released behaviour
        "text": {
            "n_ctx": kwargs.get("text_num_prompts", 8),
            "ctx_init": kwargs.get("text_prompt_init", ""),
            "class_specific": kwargs.get("text_prompt_CSC", False),
            "position": kwargs.get("text_prompt_pos", "end"),
        },
    }


def build_golden_model(golden: dict, variant: str | None = None) -> VitaCLIP:
    """The model the original constructor arguments describe, with the converted weights."""
    original = golden["config"] if variant is None else golden["variants"][variant]["config"]
    config = VitaCLIPConfig(pretrained=None, **vita_config_from_original_kwargs(original, backbone="ViT-Tiny-16"))
    model = VitaCLIP(config, golden["classes"]).eval()
    state = golden["state_dict"] if variant is None else variant_state_dict(golden, variant)
    load_state_dict_checked(model, convert_vita_state_dict(state), source="golden_tiny.pt")
    return model


def golden_video(golden: dict) -> torch.Tensor:
    return golden["video"].permute(0, 2, 1, 3, 4)  # original (B, C, T, H, W) -> ours (B, T, C, H, W)


# -- fused-op inputs --------------------------------------------------------------------------------

# the inputs of the prompt attention, in its argument order
PROMPT_ATTENTION_INPUTS = ("q", "k", "v", "k_local", "v_local", "k_global", "v_global", "k_summary", "v_summary")


def prompt_tensors(videos, frames, tokens, heads, head_dim, n_global, seed) -> dict:
    """float32 inputs with every source present (local prompts: one per frame)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    f = videos * frames
    return {"q": r(f, heads, tokens, head_dim), "k": r(f, heads, tokens, head_dim), "v": r(f, heads, tokens, head_dim),
            "k_local": r(videos, heads, frames, head_dim), "v_local": r(videos, heads, frames, head_dim),
            "k_global": r(heads, n_global, head_dim), "v_global": r(heads, n_global, head_dim),
            "k_summary": r(f, heads, head_dim), "v_summary": r(f, heads, head_dim)}


def prompt_inputs(videos, frames, tokens, heads, head_dim, local, n_global, summary, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)

    f = videos * frames
    tensors = {"q": r(f, heads, tokens, head_dim), "k": r(f, heads, tokens, head_dim), "v": r(f, heads, tokens, head_dim)}
    if local:
        tensors |= {"k_local": r(videos, heads, frames, head_dim), "v_local": r(videos, heads, frames, head_dim)}
    if n_global:
        tensors |= {"k_global": r(heads, n_global, head_dim), "v_global": r(heads, n_global, head_dim)}
    if summary:
        tensors |= {"k_summary": r(f, heads, head_dim), "v_summary": r(f, heads, head_dim)}
    return tensors


# -- videos ------------------------------------------------------------------------------------------


def make_bad_files(folder, clips):
    """Every kind of broken video, by name."""
    good_mp4, good_webm = open(clips["h264"], "rb").read(), open(clips["vp9"], "rb").read()
    bad = {"missing": folder / "missing.mp4", "directory": folder / "a_folder.mp4"}
    bad["directory"].mkdir()
    bad["empty"] = folder / "empty.mp4"
    bad["empty"].write_bytes(b"")
    bad["garbage"] = folder / "garbage.mp4"
    bad["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    bad["truncated_mp4"] = folder / "truncated.mp4"  # the index (moov) is at the end: gone
    bad["truncated_mp4"].write_bytes(good_mp4[: len(good_mp4) // 2])
    bad["truncated_webm"] = folder / "truncated.webm"  # header says 1.6 s, packets stop early
    bad["truncated_webm"].write_bytes(good_webm[: len(good_webm) // 3])
    bad["no_frames"] = folder / "no_frames.avi"  # a video stream without a single frame
    with av.open(str(bad["no_frames"]), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        container.start_encoding()
    bad["no_video"] = folder / "no_video.mp4"  # a container with no usable video stream
    with av.open(str(bad["no_video"]), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height = 64, 48
        container.start_encoding()
    return {name: str(path) for name, path in bad.items()}


EXPECTED_REASONS = {
    "missing": "file not found",
    "directory": "is a directory",
    "empty": "empty file (0 bytes)",
    "garbage": "not a readable video container",
    "truncated_mp4": "not a readable video container",
    "truncated_webm": "truncated: the container declares 1.60 s",
    "no_frames": "the video stream has no frames",
    "no_video": "no video stream",
}


def read_frames_dali(path: str | os.PathLike, indices, device: int | None = None) -> torch.Tensor:
    """Decode the frames at ``indices`` of one file with DALI: uint8 ``(N, H, W, 3)``, upright, on
    the GPU ``device``, or on the CPU when ``device`` is ``None`` (VP8/VP9/MJPEG only)."""
    return decode_dali.DaliDecoder(None, batch_size=1, device=device, num_threads=1).decode_frames(path, indices)


def finishes_within(seconds: float, function, *args):
    """``function(*args)`` run in a thread: its result (or its exception), or ``TimeoutError`` if it
    has not returned after ``seconds``: a hang. (A thread, not SIGALRM: a hang inside a C call,
    e.g. waiting on DALI, never returns to Python to see the signal.)"""
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = function(*args)
        except BaseException as e:  # noqa: BLE001 - raised again below
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"{getattr(function, '__name__', function)}: no result after {seconds} s (a hang)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def exit_code(main, *args) -> int:
    """What a CLI ``main(argv)`` exits with: its return value, or the code of the ``SystemExit``
    it raises for a user error (:mod:`vita_clip.cli`)."""
    try:
        return main(*args)
    except SystemExit as exit_:
        return exit_.code


# -- inference and evaluation ------------------------------------------------------------------------


def write_sliding_clip(path: str | Path, seed: int, frames: int = 12, size: int = 32, level: int | None = None) -> Path:
    """A short VP9 clip of a random image sliding sideways (a pure function of ``seed``), or of
    one grey ``level`` throughout."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8) if level is None else \
        np.full((size, size, 3), level, dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            image = np.roll(base, shift=t * 2 * (1 + seed % 3), axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def save_tiny_checkpoint(path: str | Path, classes: list[str], name: str = "vita-clip-tiny", seed: int = 0) -> Path:
    """A tiny random-weight model saved as a vita-clip checkpoint with its classes."""
    from vita_clip import create_model, save_checkpoint

    torch.manual_seed(seed)
    model = create_model(name, classes)
    with torch.no_grad():  # random prompts, so that classes are told apart
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
    save_checkpoint(model, path)
    return Path(path)
