"""Video lists and class-name files in the formats users already have.

Video lists, one video per line, no header:

* ``path label`` (space separated; ViFi-CLIP / MMAction2 style), and
* ``path,label`` (comma separated; the original Vita-CLIP style).

Both may appear in one file. The label is split off at the *last* separator, so paths may
contain spaces or commas. Relative paths are joined onto ``data_root``; blank lines, comments
and a UTF-8 byte-order mark (Windows editors) are ignored. A comment starts with ``#`` followed
by a space or nothing (``# train split``), or starts with ``#`` and is not a ``path label`` line;
``#437_How_To_Ride_A_Bike_ride_bike_f_cm_np1_ba_med_1.avi 5`` is an entry (HMDB51 has such names).
Class-name files are read by :mod:`vita_clip.data.classes`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SkippedSample, VideoDataError, check_on_error


@dataclass(frozen=True)
class VideoEntry:
    """One usable list line: the video's full path, its integer label, and where it came from."""

    path: str
    label: int
    list_file: str
    line: int


@dataclass
class VideoList:
    """A parsed video list: the usable ``entries`` and the lines left out (``skipped``)."""

    entries: list[VideoEntry]
    skipped: list[SkippedSample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)


def _split_line(text: str) -> tuple[str, str] | None:
    """(path, label text) of a list line, or None if it has no separator."""
    if "," in text:
        path, label = text.rsplit(",", 1)
        if label.strip().lstrip("-").isdigit():
            return path.strip(), label.strip()
    parts = text.rsplit(None, 1)
    if len(parts) == 2:
        return parts[0].strip(), parts[1]
    return None


def is_comment(text: str) -> bool:
    """Whether a list line is a comment (see the module docstring)."""
    stripped = text.strip()
    if not stripped.startswith("#"):
        return False
    if len(stripped) == 1 or stripped[1].isspace():
        return True
    split = _split_line(stripped)
    return split is None or not split[1].lstrip("-").isdigit()


def parse_list_line(text: str, list_file: str, line: int, data_root: str = "",
                    num_classes: int | None = None) -> VideoEntry:
    """Parse one non-blank list line, or raise :class:`VideoDataError` naming the file and line."""
    split = _split_line(text)
    if split is None:
        raise VideoDataError(list_file, f"expected '<path> <label>' or '<path>,<label>', got {text!r}", line)
    path, label_text = split
    fields = text.split()
    if len(fields) >= 3 and fields[-2].isdigit():
        raise VideoDataError(list_file, f"{text!r} looks like 'path num_frames label' (a frame-folder list); "
                             "expected '<path> <label>'", line)
    try:
        label = int(label_text)
    except ValueError:
        raise VideoDataError(list_file, f"the label must be an integer, got {label_text!r} in {text!r}", line) from None
    if label < 0 or (num_classes is not None and label >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        raise VideoDataError(list_file, f"label {label} of {path!r} is outside the class list, expected {bound}", line)
    return VideoEntry(path=os.path.join(data_root, path), label=label, list_file=list_file, line=line)


def read_video_list(list_file: str | os.PathLike, data_root: str | os.PathLike = "",
                    num_classes: int | None = None, on_error: str = "raise") -> VideoList:
    """Read a video list.

    Args:
        list_file: the list (formats in the module docstring).
        data_root: folder that relative paths are joined onto.
        num_classes: if given, labels must lie in ``[0, num_classes)``.
        on_error: ``"raise"`` stops at the first bad line; ``"skip"`` leaves it out and records
            it in ``VideoList.skipped``.
    """
    check_on_error(on_error)
    list_file = str(list_file)
    try:
        with open(list_file, encoding="utf-8-sig") as f:  # -sig: a BOM is not part of the first path
            lines = f.read().splitlines()
    except OSError as e:
        raise VideoDataError(list_file, f"cannot read the video list ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise VideoDataError(list_file, "the video list is not UTF-8 text") from None

    result = VideoList(entries=[])
    for number, text in enumerate(lines, start=1):
        if not text.strip() or is_comment(text):
            continue
        try:
            result.entries.append(parse_list_line(text, list_file, number, str(data_root), num_classes))
        except VideoDataError as e:
            if on_error == "raise":
                raise
            result.skipped.append(SkippedSample.from_error(e))
    return result


def write_video_list(path: str | os.PathLike, items: list[tuple[str, int]]) -> Path:
    """Write ``path label`` lines (the space style every reader here accepts)."""
    path = Path(path)
    path.write_text("".join(f"{p} {label}\n" for p, label in items), encoding="utf-8")
    return path
