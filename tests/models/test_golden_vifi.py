"""ViFiCLIP reproduces the original ViFi-CLIP code (golden outputs, float32, CPU).

``fixtures/golden_vifi_tiny.pt`` (see ``fixtures/make_golden_vifi_tiny.py``) holds what the
original ``trainers/vificlip.py`` computed for seven variants of one tiny random CLIP. Each
variant's state dict is written the way the original training script saves it and loaded
through ``create_model(..., checkpoint=...)``, the path a user takes with released weights;
the base CLIP file (the original's ``clip._download``) gives the token embedding.
"""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import open_clip
import pytest
import torch

from helpers import rel_err
from vita_clip import create_model
from vita_clip.checkpoints import atomic_save, read_checkpoint
from vita_clip.checkpoints.original import convert_vifi_state_dict, vifi_config_from_original
from vita_clip.errors import CheckpointMismatchError

TOL = 1e-5
FIXTURE = Path(__file__).parents[1] / "fixtures" / "golden_vifi_tiny.pt"
BACKBONE = "ViFi-Golden-Tiny"  # open_clip config with the golden file's CLIP sizes
VARIANTS = ["finetune_both", "finetune_image", "finetune_text", "zs_eval",
            "prompt_vl_deep", "prompt_vl_ctxinit", "prompt_text_only"]
PROMPTED = ["prompt_vl_deep", "prompt_vl_ctxinit", "prompt_text_only"]


@pytest.fixture(scope="module")
def vifi_golden() -> dict:
    """The fixture with the full token embedding rebuilt: rows the golden prompts never use
    are NaN, so using one fails loudly."""
    g = torch.load(FIXTURE, weights_only=True)
    clip = g["config"]["clip"]
    rows = g["token_embedding_rows"]
    table = torch.full((clip["vocab_size"], clip["transformer_width"]), float("nan"))
    table[rows["ids"]] = rows["rows"]
    g["token_embedding"] = table
    return g


@pytest.fixture(scope="module")
def base_clip(vifi_golden, tmp_path_factory) -> str:
    """The synthetic pretrained CLIP as an OpenAI-layout file, its backbone config registered."""
    folder = tmp_path_factory.mktemp("vifi_golden")
    c = vifi_golden["config"]["clip"]
    config = {"embed_dim": c["embed_dim"], "quick_gelu": True,
              "vision_cfg": {"image_size": c["image_resolution"], "layers": c["vision_layers"], "width": c["vision_width"],
                             "head_width": c["vision_width"] // c["vision_heads"], "patch_size": c["vision_patch_size"]},
              "text_cfg": {"context_length": c["context_length"], "vocab_size": c["vocab_size"],
                           "width": c["transformer_width"], "heads": c["transformer_heads"], "layers": c["transformer_layers"]}}
    (folder / f"{BACKBONE}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / f"{BACKBONE}.json")
    path = folder / "clip_tiny_openai.pt"
    torch.save({**vifi_golden["clip_checkpoint"], "token_embedding.weight": vifi_golden["token_embedding"]}, path)
    return str(path)


def yacs_config(vifi_golden: dict, variant: str, monkeypatch) -> object:
    """A frozen config object pickled as ``yacs.config.CfgNode``, like the original's ``_C``
    (a dict subclass whose bookkeeping lives in ``__dict__``); yacs itself is not installed."""
    module = types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, values):
            super().__init__({k: CfgNode(v) if isinstance(v, dict) else v for k, v in values.items()})
            self.__dict__.update({"__immutable__": True, "__deprecated_keys__": set(), "__renamed_keys__": {},
                                  "__new_allowed__": False})

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    module.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
    monkeypatch.setitem(sys.modules, "yacs.config", module)
    return CfgNode({
        "BASE": [""],
        "DATA": {"NUM_FRAMES": vifi_golden["config"]["num_frames"], "NUM_CLASSES": len(vifi_golden["classes"]), "INPUT_SIZE": 32},
        "MODEL": {"ARCH": vifi_golden["config"]["arch_name"], "RESUME": None, "FIX_TEXT": True},
        "TRAINER": {"ViFi_CLIP": dict(vifi_golden["variants"][variant]["trainer_cfg"])},
        "TRAIN": {"EPOCHS": 30, "LR": 8e-6, "OPT_LEVEL": "O1"},
    })


def save_like_original(vifi_golden: dict, variant: str, path: Path, monkeypatch) -> None:
    """What ``utils/tools.py: epoch_saving`` writes: the DDP state dict (``module.`` keys,
    derived prompt buffers included), optimizer, scheduler, accuracy, epoch and yacs config."""
    state = vifi_golden["variants"][variant]["state_dict"]
    trainable = [torch.nn.Parameter(state[n].clone()) for n in vifi_golden["variants"][variant]["trainable_parameters"]]
    optimizer = torch.optim.AdamW(trainable, lr=8e-6, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.001)
    with monkeypatch.context() as patch:
        config = yacs_config(vifi_golden, variant, patch)
        torch.save({"model": {"module." + k: v for k, v in state.items()},
                    "optimizer": optimizer.state_dict(),
                    "lr_scheduler": {"t_initial": 100, "lr_min": 8e-8, "warmup_t": 5, "base_values": [8e-6],
                                     "noise_range_t": None, "t_in_epochs": False},
                    "max_accuracy": 12.5, "epoch": 9, "config": config}, path)
    assert "yacs" not in sys.modules  # the reader must cope without it


@pytest.fixture(scope="module")
def original_checkpoints(vifi_golden, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("vifi_original_ckpts")
    paths = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for variant in VARIANTS:
            paths[variant] = folder / f"{variant}_ckpt_epoch_9.pth"
            save_like_original(vifi_golden, variant, paths[variant], monkeypatch)
    return paths


def load(vifi_golden, base_clip, checkpoint, **overrides):
    return create_model("vifi-clip", vifi_golden["classes"], backbone=BACKBONE, pretrained=base_clip,
                        checkpoint=checkpoint, **overrides).eval()


def capture(model, video: torch.Tensor, keep: int) -> dict[str, torch.Tensor]:
    """Forward hooks record what the golden file names (blocks in its LND layout; text rows
    cut to the first ``keep`` positions, the only ones that reach an output)."""
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def put(name, value):
        seen[name] = value.detach().clone()

    def on_input(module, name, pick=lambda a: a[0]):
        handles.append(module.register_forward_pre_hook(lambda m, a: put(name, pick(a))))

    def on_output(module, name, pick=lambda o: o):
        handles.append(module.register_forward_hook(lambda m, a, o: put(name, pick(o))))

    lnd = lambda x: x.transpose(0, 1)  # noqa: E731
    blocks = model.visual.transformer.resblocks
    on_input(blocks[0], "image_encoder.ln_pre.out")
    for i, block in enumerate(blocks):
        p = f"image_encoder.transformer.resblocks.{i}"
        on_output(block, f"{p}.out", lnd)
        on_output(block, f"{p}.out_cls", lambda o: o[:, 0])
        on_input(block.ln_1, f"{p}.attn_in", lambda a: lnd(a[0]))
    on_output(model.visual.ln_post, "image_encoder.ln_post.out")
    on_input(model.text, "prompt_learner.out")
    on_input(model.text, "tokens", lambda a: a[1])
    blocks = model.text.transformer.resblocks
    on_input(blocks[0], "text_encoder.transformer.in", lambda a: lnd(a[0][:, :keep]))
    for i, block in enumerate(blocks):
        p = f"text_encoder.transformer.resblocks.{i}"
        on_output(block, f"{p}.out", lambda o: lnd(o[:, :keep]))
        on_input(block.ln_1, f"{p}.attn_in", lambda a: lnd(a[0][:, :keep]))
    on_output(model.text.ln_final, "ln_final")
    try:
        with torch.no_grad():
            seen["video_features"] = model.encode_video(video)
            seen["text_features"] = model.encode_text()
    finally:
        for h in handles:
            h.remove()
    eot = seen["tokens"].argmax(dim=-1)
    seen["text_encoder.ln_final.out_eot"] = seen.pop("ln_final")[torch.arange(len(eot)), eot]
    with torch.no_grad():
        seen["frame_features"] = model.encode_frames(video.flatten(0, 1))
        seen["logits"] = model(video)
    return seen


@pytest.mark.parametrize("variant", VARIANTS)
def test_original_checkpoint_reproduces_every_golden_output(vifi_golden, base_clip, original_checkpoints, variant):
    expected = vifi_golden["variants"][variant]
    model = load(vifi_golden, base_clip, original_checkpoints[variant])
    assert model.config.num_frames == vifi_golden["config"]["num_frames"]
    assert torch.equal(model.template_tokens()[0], expected["tokenized_prompts"])
    seen = capture(model, vifi_golden["video"], expected["text_keep_positions"])
    assert torch.equal(seen["tokens"], expected["tokenized_prompts"])
    outputs = {**expected["intermediates"], **{k: expected[k] for k in ("frame_features", "video_features",
                                                                        "text_features", "logits")}}
    errors = {}
    for name, value in outputs.items():
        assert name in seen, f"{name} was not captured"
        assert seen[name].shape == value.shape, name
        errors[name] = rel_err(seen[name], value)
    print(f"{variant}: max relative error {max(errors.values()):.2e} ({max(errors, key=errors.get)})")
    assert max(errors.values()) <= TOL, {k: v for k, v in errors.items() if v > TOL}


@pytest.mark.parametrize("variant", VARIANTS)
def test_trainable_parameters_match_the_original(vifi_golden, base_clip, original_checkpoints, variant):
    """The same tensors train (names mapped by the converter, shapes compared), per mode."""
    expected = vifi_golden["variants"][variant]
    original = {n: expected["state_dict"][n] for n in expected["trainable_parameters"]}
    want = {k: tuple(v.shape) for k, v in convert_vifi_state_dict(original).items()}
    model = load(vifi_golden, base_clip, original_checkpoints[variant])
    got = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    assert got == want
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(v.numel() for v in original.values())


@pytest.mark.parametrize("variant", ["prompt_vl_deep", "prompt_vl_ctxinit"])
def test_fused_path_reproduces_the_golden_outputs(vifi_golden, base_clip, original_checkpoints, variant):
    expected = vifi_golden["variants"][variant]
    model = load(vifi_golden, base_clip, original_checkpoints[variant], fused=True)
    with torch.no_grad():
        video_features = model.encode_video(vifi_golden["video"])
        logits = model(vifi_golden["video"])
    errors = rel_err(video_features, expected["video_features"]), rel_err(logits, expected["logits"])
    print(f"{variant} fused: relative error video features {errors[0]:.2e}, logits {errors[1]:.2e}")
    assert max(errors) <= TOL


def test_bare_state_dict_with_the_original_settings(vifi_golden, base_clip, tmp_path):
    """A state dict alone (no stored config): prompt sizes come from its weights, the rest from
    ``vifi_config_from_original`` of the original's TRAINER settings."""
    for variant in ("prompt_vl_deep", "zs_eval"):
        expected = vifi_golden["variants"][variant]
        path = tmp_path / f"{variant}.pth"
        atomic_save(expected["state_dict"], path)
        overrides = {k: v for k, v in vifi_config_from_original(expected["trainer_cfg"]).items()
                     if not k.startswith(("text_prompt", "vision_prompt"))}
        model = load(vifi_golden, base_clip, path, **overrides)
        with torch.no_grad():
            assert rel_err(model(vifi_golden["video"]), expected["logits"]) <= TOL


def test_switching_off_the_fp16_prompt_rounding(vifi_golden, base_clip, original_checkpoints):
    """``fp16_prompts=False`` gives what the original would compute without its ``.half()``
    (the golden file's diagnostic logits), which differs from the original's output."""
    for variant in PROMPTED:
        expected = vifi_golden["variants"][variant]
        model = load(vifi_golden, base_clip, original_checkpoints[variant], fp16_prompts=False)
        with torch.no_grad():
            logits = model(vifi_golden["video"])
        assert rel_err(logits, expected["diagnostic_logits_without_prompt_fp16_rounding"]) <= TOL
        assert rel_err(logits, expected["logits"]) > 2 * TOL  # the rounding shows at the golden tolerance


def test_switching_off_the_kept_underscores(vifi_golden, base_clip, original_checkpoints):
    model = load(vifi_golden, base_clip, original_checkpoints["finetune_both"], keep_underscores=False)
    tokens = model.template_tokens()[0]
    expected = vifi_golden["variants"]["finetune_both"]["tokenized_prompts"]
    row = vifi_golden["classes"].index("brush_hair")
    assert not torch.equal(tokens[row], expected[row])
    others = [i for i in range(len(vifi_golden["classes"])) if i != row]
    assert torch.equal(tokens[others], expected[others])


def test_original_checkpoint_is_read_safely(vifi_golden, original_checkpoints):
    loaded = read_checkpoint(original_checkpoints["prompt_vl_deep"])
    assert loaded["kind"] == "original-vifi"
    assert loaded["original_config"]["TRAINER"]["ViFi_CLIP"]["N_CTX_TEXT"] == 6
    assert not any(k.startswith("module.") or "token_" in k for k in loaded["state_dict"])
    assert loaded["state_dict"]["vision_prompts"].shape == (3, 3, 64)


def test_unknown_pickled_class_fails_with_the_fallback(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"model": {"module.image_encoder.proj": torch.zeros(2)}, "config": types.SimpleNamespace(a=1)}, path)
    with pytest.raises(CheckpointMismatchError, match="weights_only=False"):
        read_checkpoint(path)


def test_stored_config_that_contradicts_the_weights_is_refused(vifi_golden, base_clip, tmp_path, monkeypatch):
    """A ``prompt_vl_deep`` state dict with the ``finetune_both`` config (no prompting)."""
    state = vifi_golden["variants"]["prompt_vl_deep"]["state_dict"]
    with monkeypatch.context() as patch:
        config = yacs_config(vifi_golden, "finetune_both", patch)
        torch.save({"model": {"module." + k: v for k, v in state.items()}, "epoch": 0, "config": config},
                   tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match="stored config and its weights disagree"):
        load(vifi_golden, base_clip, tmp_path / "mixed.pth")


def test_zero_size_prompts_are_dropped(vifi_golden):
    """A depth set with ``N_CTX = 0`` leaves empty ``VPT_shallow`` tensors: no-ops in the original."""
    state = dict(vifi_golden["variants"]["finetune_both"]["state_dict"])
    state["image_encoder.VPT"] = torch.zeros(0, 64)
    state["text_encoder.transformer.resblocks.1.VPT_shallow"] = torch.zeros(0, 80)
    converted = convert_vifi_state_dict(state)
    assert "vision_prompts" not in converted and "text_prompts" not in converted
    assert set(converted) == set(convert_vifi_state_dict(vifi_golden["variants"]["finetune_both"]["state_dict"]))


def test_context_init_follows_the_original_rule():
    """``text_prompt_init`` initialises the first n <= 4 contexts, the other words stay fixed;
    more contexts than the words have tokens would overwrite class names, so it is refused."""
    two = create_model("vifi-clip-tiny", ["yoga"], finetune="none", text_prompts=2, text_prompt_depth=1)
    assert two.prompt_learner.n_ctx == 2 and two.prompt_learner.prompt_prefix == "a photo of a"
    six = create_model("vifi-clip-tiny", ["yoga"], finetune="none", text_prompts=6, text_prompt_depth=1)
    assert six.prompt_learner.prompt_prefix == "X X X X X X"
    with pytest.raises(ValueError, match="overwrite class-name tokens"):
        create_model("vifi-clip-tiny", ["yoga"], finetune="none", text_prompts=3, text_prompt_depth=1,
                     text_prompt_init="a video")
