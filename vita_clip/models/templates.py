"""Hand-written prompt templates for zero-shot classification (``{}`` is the class name).

``class_only`` is the published Vita-CLIP zero-shot protocol ("class-only" text features)
and the prompt ViFi-CLIP uses for vanilla zero-shot CLIP; ``a_photo_of`` is the ViFi-CLIP
training prompt; ``video`` is a small ensemble written for action recognition.
"""
from __future__ import annotations

from collections.abc import Sequence

TEMPLATES: dict[str, tuple[str, ...]] = {
    "class_only": ("{}",),
    "a_photo_of": ("a photo of a {}.",),
    "video": (
        "a video of a person {}.",
        "a video of a person doing {}.",
        "a video of {}.",
        "a clip of someone {}.",
        "a photo of a person {}.",
        "a person is {}.",
        "footage of {}.",
        "{}, an action.",
    ),
}


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """A template set by name, or a list of templates, checked to hold ``{}``."""
    if isinstance(templates, str):
        if templates in TEMPLATES:
            return TEMPLATES[templates]
        if "{}" not in templates:
            raise ValueError(f"unknown template set {templates!r}; known: {sorted(TEMPLATES)} (or pass templates containing '{{}}')")
        templates = (templates,)
    templates = tuple(templates)
    if not templates:
        raise ValueError("the template list is empty")
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"template {t!r} has no '{{}}' placeholder for the class name")
    return templates
