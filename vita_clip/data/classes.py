"""Class-name files in the formats users already have.

A CSV with an ``id,name`` header (ViFi-CLIP's ``labels/*.csv``), a JSON list
(``k400_class_mappings.json``), or plain text with one name per line (``k400_classes.txt``).
Shipped class lists are found by name through :func:`vita_clip.data.protocols.resolve_classes`.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from .errors import VideoDataError


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names, in label order, from an ``id,name`` CSV, a JSON list or a one-per-line file.

    CSV ids must be exactly ``0 .. n-1`` (in any row order); names are returned as written
    (UCF101 keeps CamelCase, HMDB51's text list keeps underscores).
    """
    path = str(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a BOM is not part of the header
            text = f.read()
    except OSError as e:
        raise VideoDataError(path, f"cannot read the class-name file ({e.strerror or e})") from None

    if path.endswith(".json"):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise VideoDataError(path, f"invalid JSON ({e.msg})", e.lineno) from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise VideoDataError(path, "expected a JSON list of class-name strings")
    elif path.endswith(".csv"):
        names = _read_class_csv(path, text)
    else:
        names = [line.strip() for line in text.splitlines()]
        for number, name in enumerate(names, start=1):
            if not name and any(names[number:]):
                raise VideoDataError(path, "empty class name (one name per line expected)", number)
        while names and not names[-1]:
            names.pop()

    if not names:
        raise VideoDataError(path, "no class names found")
    return names


def _read_class_csv(path: str, text: str) -> list[str]:
    rows = list(csv.reader(text.splitlines()))
    if not rows or [c.strip() for c in rows[0]] != ["id", "name"]:
        raise VideoDataError(path, f"expected the header 'id,name', got {','.join(rows[0]) if rows else ''!r}", 1)
    by_id: dict[int, str] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise VideoDataError(path, f"expected 2 columns 'id,name', got {len(row)}: {row!r}", number)
        try:
            class_id = int(row[0])
        except ValueError:
            raise VideoDataError(path, f"the id must be an integer, got {row[0]!r}", number) from None
        if class_id in by_id:
            raise VideoDataError(path, f"duplicate id {class_id}", number)
        by_id[class_id] = row[1].strip()
    if sorted(by_id) != list(range(len(by_id))):
        missing = sorted(set(range(len(by_id))) - set(by_id))
        raise VideoDataError(path, f"ids must be 0..{len(by_id) - 1} without gaps; missing {missing[:5]}")
    return [by_id[i] for i in range(len(by_id))]


def write_class_csv(path: str | os.PathLike, names: list[str]) -> Path:
    """Write an ``id,name`` CSV."""
    path = Path(path)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "name"])
        writer.writerows(enumerate(names))
    return path
