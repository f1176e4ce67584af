"""Convert checkpoints of the original implementations to this package's layout.

* Vita-CLIP (TalalWasim/Vita-CLIP): EVL-style vision tower with separate q/k/v linears,
  ``norm1/norm2``, ``mlp.fc1/fc2``, ``patch_embed.proj`` (with a bias), ``blocks.i.*``;
  OpenAI-layout text tower under ``textual.``; DDP ``module.`` prefixes; training
  checkpoints keep the weights under ``model``. Also reads the converted CLIP backbone
  checkpoint the original training script loads (the same keys, without the prompts).
* ViFi-CLIP (muzairkhattak/ViFi-CLIP): OpenAI CLIP layout under ``image_encoder.`` and
  ``text_encoder.``, deep prompts as ``VPT`` / ``VPT_shallow``; no token embedding (it comes
  from the base CLIP weights).

Buffers derived from class names (``token_prefix``, ``token_suffix``,
``complete_text_embeddings``) are dropped: the models rebuild them from the class names.
"""
from __future__ import annotations

import re

import torch

from .io import unwrap_state_dict

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


def _stack_layers(per_layer: dict[int, torch.Tensor], first: int, what: str) -> torch.Tensor:
    layers = sorted(per_layer)
    if layers != list(range(first, first + len(layers))):
        raise ValueError(f"ViFi-CLIP checkpoint: {what} of layers {layers} are not consecutive from {first}")
    return torch.stack([per_layer[i] for i in layers])

