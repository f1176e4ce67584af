"""Convert checkpoints of the original implementations to this package's layout.

* Vita-CLIP (TalalWasim/Vita-CLIP): EVL-style vision tower with separate q/k/v linears,
  ``norm1/norm2``, ``mlp.fc1/fc2``, ``patch_embed.proj`` (with a bias), ``blocks.i.*``;
  OpenAI-layout text tower under ``textual.``; DDP ``module.`` prefixes; training
  checkpoints keep the weights under ``model``. Also reads the converted CLIP backbone
  checkpoint the original training script loads (the same keys, without the prompts).
* ViFi-CLIP (muzairkhattak/ViFi-CLIP): OpenAI CLIP layout under ``image_encoder.`` and
  ``text_encoder.``, deep prompts as ``VPT`` / ``VPT_shallow``; no token embedding (it comes
  from the base CLIP weights). Its training script (``utils/tools.py: epoch_saving``) saves
  ``{'model': DDP state dict ('module.' prefixes), 'optimizer', 'lr_scheduler',
  'max_accuracy', 'epoch', 'config': yacs CfgNode}``; the CfgNode is read as a plain dict
  without yacs (:data:`ORIGINAL_SAFE_GLOBALS`) and its ``TRAINER.ViFi_CLIP`` and
  ``DATA.NUM_FRAMES`` settings set the model config (:func:`vifi_config_overrides`).

Buffers derived from class names (``token_prefix``, ``token_suffix``,
``complete_text_embeddings``) are dropped: the models rebuild them from the class names.
"""
from __future__ import annotations

import re
from collections import OrderedDict

import torch

from .io import unwrap_state_dict


class _YacsConfigNode:
    """Stand-in for ``yacs.config.CfgNode`` (a dict subclass) when original ViFi-CLIP checkpoints
    are read with ``torch.load(weights_only=True)``: every node becomes a plain ``OrderedDict``
    (yacs' bookkeeping attributes land in its ``__dict__``), so neither yacs nor any code from
    the file is needed."""

    def __new__(cls, *args):
        return OrderedDict()


# For ``torch.serialization.safe_globals`` around ``torch.load(..., weights_only=True)``.
ORIGINAL_SAFE_GLOBALS = [(_YacsConfigNode, "yacs.config.CfgNode")]

_DERIVED = re.compile(r"(^|\.)(token_prefix|token_suffix|complete_text_embeddings|tokenized_prompts)$")


def is_original_vita_state_dict(state: dict) -> bool:
    return any(k.startswith("visual.blocks.") or k.startswith("visual.patch_embed.") for k in state)


def is_original_vifi_state_dict(state: dict) -> bool:
    return any(k.startswith("image_encoder.") or k.startswith("text_encoder.") for k in state)


def convert_vita_state_dict(checkpoint) -> dict[str, torch.Tensor]:
    """Original Vita-CLIP state dict (or training checkpoint) -> :class:`~vita_clip.VitaCLIP` keys."""
    state = unwrap_state_dict(checkpoint, "Vita-CLIP checkpoint")
    if not is_original_vita_state_dict(state):
        raise ValueError("not an original Vita-CLIP checkpoint: it has no 'visual.blocks.*' / 'visual.patch_embed.*' keys")
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    renames = {
        "visual.patch_embed.proj.weight": "visual.conv1.weight",
        "visual.patch_embed.proj.bias": "visual.conv1.bias",
        "visual.cls_token": "visual.class_embedding",
        "visual.pos_embed": "visual.positional_embedding",
    }
    block_renames = {"norm1": "ln_1", "norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj", "attn.out_proj": "attn.out_proj"}
    for key, value in state.items():
        if _DERIVED.search(key):
            continue
        if key in renames:
            out[renames[key]] = value
            continue
        m = re.fullmatch(r"visual\.blocks\.(\d+)\.(.+)", key)
        if m is None:
            if key.startswith("textual."):
                out["text." + key[len("textual."):]] = value
            else:  # logit_scale, visual.{time_embed, global_prompts, ln_pre, ln_post, proj}, prompt_learner.ctx
                out[key] = value
            continue
        i, rest = int(m.group(1)), m.group(2)
        q = re.fullmatch(r"attn\.([qkv])_proj\.(weight|bias)", rest)
        if q:
            qkv.setdefault((i, q.group(2)), {})[q.group(1)] = value
            continue
        if rest == "local_prompts":
            out[f"visual.prompt_layers.{i}.local_prompts"] = value.reshape(value.shape[-2], value.shape[-1])
            continue
        if rest.startswith(("cls_proj.", "summary_ln.")):
            out[f"visual.prompt_layers.{i}.{rest}"] = value
            continue
        if rest.startswith("summary_attn_layer."):
            out[f"visual.prompt_layers.{i}.summary_attn.{rest[len('summary_attn_layer.'):]}"] = value
            continue
        for old, new in block_renames.items():
            if rest.startswith(old + "."):
                out[f"visual.transformer.resblocks.{i}.{new}{rest[len(old):]}"] = value
                break
        else:
            raise ValueError(f"Vita-CLIP checkpoint: unexpected key {key!r}")
    for (i, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"Vita-CLIP checkpoint: block {i} attention {kind} lacks {sorted({'q', 'k', 'v'} - set(parts))}")
        out[f"visual.transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def vita_config_overrides(state: dict[str, torch.Tensor]) -> dict:
    """Config fields implied by a converted Vita-CLIP state dict (frames, prompt types, text context)."""
    overrides: dict = {}
    if "visual.time_embed" in state:
        overrides["num_frames"] = state["visual.time_embed"].shape[0]
    overrides["use_global_prompts"] = "visual.global_prompts" in state
    if "visual.global_prompts" in state:
        overrides["num_global_prompts"] = state["visual.global_prompts"].shape[1]
    overrides["use_summary_token"] = any(".summary_attn." in k for k in state)
    overrides["use_local_prompts"] = any(k.endswith(".local_prompts") for k in state)
    ctx = state.get("prompt_learner.ctx")
    if ctx is not None:
        overrides["text"] = {"n_ctx": ctx.shape[-2], "class_specific": ctx.dim() == 3}
    return overrides


def convert_vifi_state_dict(checkpoint) -> dict[str, torch.Tensor]:
    """Original ViFi-CLIP state dict (or training checkpoint) -> :class:`~vita_clip.ViFiCLIP` keys.

    The vision prompts ``image_encoder.VPT`` and ``...resblocks.i.VPT_shallow`` are stacked
    into ``vision_prompts`` (depth, n, D); the text ones into ``text_prompts`` (depth-1, n, W).
    """
    state = unwrap_state_dict(checkpoint, "ViFi-CLIP checkpoint")
    if not is_original_vifi_state_dict(state):
        raise ValueError("not an original ViFi-CLIP checkpoint: it has no 'image_encoder.*' / 'text_encoder.*' keys")
    out: dict[str, torch.Tensor] = {}
    vision_deep: dict[int, torch.Tensor] = {}
    text_deep: dict[int, torch.Tensor] = {}
    for key, value in state.items():
        if _DERIVED.search(key):
            continue
        m = re.fullmatch(r"(image_encoder|text_encoder)\.transformer\.resblocks\.(\d+)\.VPT_shallow", key)
        if (m or key == "image_encoder.VPT") and value.numel() == 0:
            continue  # zero prompts (a depth set with N_CTX 0): a no-op in the original
        if m:
            (vision_deep if m.group(1) == "image_encoder" else text_deep)[int(m.group(2))] = value
        elif key == "image_encoder.VPT":
            vision_deep[0] = value
        elif key.startswith("image_encoder."):
            out["visual." + key[len("image_encoder."):]] = value
        elif key.startswith("text_encoder."):
            out["text." + key[len("text_encoder."):]] = value
        elif key in ("logit_scale", "prompt_learner.ctx"):
            out[key] = value
        else:
            raise ValueError(f"ViFi-CLIP checkpoint: unexpected key {key!r}")
    if vision_deep:
        out["vision_prompts"] = _stack_layers(vision_deep, first=0, what="vision prompts")
    if text_deep:
        out["text_prompts"] = _stack_layers(text_deep, first=1, what="text prompts")
    return out


# TRAINER.ViFi_CLIP of the original config (utils/config.py) with its defaults.
ORIGINAL_VIFI_TRAINER_DEFAULTS = {
    "PROMPT_MODEL": False, "N_CTX_VISION": 0, "N_CTX_TEXT": 0, "CTX_INIT": "a photo of a",
    "PROMPT_DEPTH_VISION": 0, "PROMPT_DEPTH_TEXT": 1, "USE": "both", "ZS_EVAL": False,
}
# What the original computes where a natural reading differs (see ViFiCLIPConfig).
ORIGINAL_VIFI_BEHAVIOUR = {"fp16_prompts": True, "keep_underscores": True}


def vifi_config_from_original(trainer: dict, num_frames: int | None = None) -> dict:
    """:class:`~vita_clip.ViFiCLIPConfig` fields for the original's ``TRAINER.ViFi_CLIP``
    settings (missing keys take the original defaults) and ``DATA.NUM_FRAMES``.

    ``USE`` chooses the trained tower as in ``returnCLIP`` ("both", "image", anything else
    the text side); ``ZS_EVAL`` makes the bare class name the prompt; without prompting the
    prompt is ``CTX_INIT + " {}."``.
    """
    unknown = sorted(set(trainer) - set(ORIGINAL_VIFI_TRAINER_DEFAULTS))
    if unknown:
        raise ValueError(f"TRAINER.ViFi_CLIP: unknown keys {unknown}; known: {sorted(ORIGINAL_VIFI_TRAINER_DEFAULTS)}")
    t = {**ORIGINAL_VIFI_TRAINER_DEFAULTS, **trainer}
    fields: dict = dict(ORIGINAL_VIFI_BEHAVIOUR)
    if num_frames is not None:
        fields["num_frames"] = int(num_frames)
    if t["PROMPT_MODEL"]:
        if t["ZS_EVAL"]:
            raise ValueError("TRAINER.ViFi_CLIP: ZS_EVAL with PROMPT_MODEL is not a working setting of the original "
                             "(its prompt learner then has no context)")
        vision = t["N_CTX_VISION"] if t["PROMPT_DEPTH_VISION"] > 0 else 0
        fields.update(finetune="none", text_prompts=t["N_CTX_TEXT"], text_prompt_depth=t["PROMPT_DEPTH_TEXT"],
                      vision_prompts=vision, vision_prompt_depth=t["PROMPT_DEPTH_VISION"] if vision else 0,
                      text_prompt_init=t["CTX_INIT"])
    else:
        if t["PROMPT_DEPTH_VISION"] > 0 and t["N_CTX_VISION"] > 0:
            raise ValueError("TRAINER.ViFi_CLIP: vision prompts without PROMPT_MODEL (fine-tuned together with CLIP) "
                             "are not supported; ViFiCLIP learns prompts only on a frozen model")
        init = t["CTX_INIT"].replace("_", " ")
        fields.update(finetune=t["USE"] if t["USE"] in ("both", "image") else "text",
                      templates=("{}",) if t["ZS_EVAL"] else (f"{init} {{}}.",),
                      text_prompts=0, text_prompt_depth=0, vision_prompts=0, vision_prompt_depth=0)
    return fields


def vifi_config_overrides(state: dict[str, torch.Tensor], original_config: dict | None = None) -> dict:
    """Config fields implied by a converted ViFi-CLIP checkpoint: the original's behaviour
    (:data:`ORIGINAL_VIFI_BEHAVIOUR`), the prompt sizes its weights hold and, when it stores
    its training config, that config's settings (:func:`vifi_config_from_original`); a config
    that disagrees with the weights raises."""
    fields: dict = dict(ORIGINAL_VIFI_BEHAVIOUR)
    if original_config is not None:
        trainer = (original_config.get("TRAINER") or {}).get("ViFi_CLIP") or {}
        fields.update(vifi_config_from_original(dict(trainer), (original_config.get("DATA") or {}).get("NUM_FRAMES")))
    ctx, vision, text = state.get("prompt_learner.ctx"), state.get("vision_prompts"), state.get("text_prompts")
    if ctx is None and vision is None and text is None:
        weights = {"text_prompts": 0, "vision_prompts": 0} if original_config is not None else {}
    else:
        if ctx is None:
            raise ValueError("ViFi-CLIP checkpoint: it has deep prompts but no 'prompt_learner.ctx'")
        weights = {"finetune": "none", "text_prompts": ctx.shape[-2],
                   "text_prompt_depth": 1 + (text.shape[0] if text is not None else 0),
                   "vision_prompts": vision.shape[1] if vision is not None else 0,
                   "vision_prompt_depth": vision.shape[0] if vision is not None else 0}
    if original_config is not None:
        clash = {k: (fields[k], v) for k, v in weights.items() if k in fields and fields[k] != v}
        if clash:
            raise ValueError(f"ViFi-CLIP checkpoint: its stored config and its weights disagree "
                             f"(field: (config, weights)): {clash}")
    fields.update(weights)
    return fields


def original_training_config(checkpoint) -> dict | None:
    """The training config an original checkpoint stores under ``'config'`` (yacs CfgNode,
    read as nested dicts), as plain dicts; ``None`` when there is none."""
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict):
        return None

    def plain(value):
        return {k: plain(v) for k, v in value.items()} if isinstance(value, dict) else value

    return plain(config)


def _stack_layers(per_layer: dict[int, torch.Tensor], first: int, what: str) -> torch.Tensor:
    layers = sorted(per_layer)
    if layers != list(range(first, first + len(layers))):
        raise ValueError(f"ViFi-CLIP checkpoint: {what} of layers {layers} are not consecutive from {first}")
    return torch.stack([per_layer[i] for i in layers])

