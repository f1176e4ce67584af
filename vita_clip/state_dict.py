"""Loading state dicts with errors that name the offending keys and shapes."""
from __future__ import annotations

import torch
from torch import nn

from .errors import CheckpointMismatchError

_SHOW = 8  # keys listed per problem kind; the rest are counted


def load_state_dict_checked(
    module: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint", strict: bool = True
) -> tuple[list[str], list[str]]:
    """``module.load_state_dict`` with one readable error for every mismatch.

    Shape mismatches always raise. With ``strict``, missing and unexpected keys raise too;
    otherwise they are returned as ``(missing, unexpected)``.
    """
    if not state:
        raise CheckpointMismatchError(f"{source}: the state dict is empty")
    expected = module.state_dict()
    problems = []
    shape_errors = [
        f"{k}: model expects {tuple(expected[k].shape)}, {source} has {tuple(v.shape)}"
        for k, v in state.items()
        if k in expected and tuple(expected[k].shape) != tuple(v.shape)
    ]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if shape_errors:
        problems.append(_listing("shape mismatches", shape_errors))
    if strict and missing:
        problems.append(_listing("keys the model needs but the checkpoint lacks", missing))
    if strict and unexpected:
        problems.append(_listing("keys in the checkpoint the model does not have", unexpected))
    if problems:
        raise CheckpointMismatchError(f"{source} does not fit {type(module).__name__}:\n" + "\n".join(problems))
    module.load_state_dict(state, strict=False)
    return missing, unexpected


def _listing(title: str, items: list[str]) -> str:
    shown = "\n".join(f"    {item}" for item in items[:_SHOW])
    more = f"\n    ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"  {title} ({len(items)}):\n{shown}{more}"
