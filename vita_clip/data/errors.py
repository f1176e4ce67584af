"""What goes wrong with data, said so that a user can find and fix it.

Every problem with a list line, a label or a video becomes a :class:`VideoDataError` naming
the file (and the list line). Under ``on_error="skip"`` the same information is kept as a
:class:`SkippedSample` record, so that skipped items are counted and listed, never silently
replaced.
"""
from __future__ import annotations

from dataclasses import dataclass

ON_ERROR_POLICIES = ("skip", "raise")


class VideoDataError(ValueError):
    """A list line, label file or video that cannot be used.

    Attributes:
        path: the offending file (the list or label file for line problems, else the video).
        reason: what was wrong and what was expected.
        line: 1-based line number in ``path`` (list and label problems), else ``None``.
    """

    def __init__(self, path: str, reason: str = "", line: int | None = None):
        self.path = str(path)
        self.reason = reason
        self.line = line
        if not reason:  # rebuilt from its message (DataLoader workers re-raise that way)
            super().__init__(self.path)
            return
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class SkippedSample:
    """One item left out under ``on_error="skip"``.

    ``index`` is the dataset index (``None`` for list lines dropped before indexing); ``path``,
    ``line`` and ``reason`` are those of the :class:`VideoDataError` that caused the skip;
    ``listed_at`` says where the video is listed (``"train.txt, line 12"``), so that the line
    can be fixed or removed. The same record notes videos that were used but are odd (a file
    that ends early against its header, a clip padded by repeating frames).
    """

    index: int | None
    path: str
    reason: str
    line: int | None = None
    listed_at: str | None = None

    @classmethod
    def from_error(cls, error: VideoDataError, index: int | None = None) -> SkippedSample:
        return cls(index=index, path=error.path, reason=error.reason, line=error.line)

    def __str__(self) -> str:
        where = f"{self.path}, line {self.line}" if self.line is not None else self.path
        listed = f" (listed in {self.listed_at})" if self.listed_at else ""
        return f"{where}: {self.reason}{listed}"


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR_POLICIES:
        raise ValueError(f"on_error must be one of {ON_ERROR_POLICIES}, got {on_error!r}")
    return on_error


def format_skip_report(skipped: list[SkippedSample], title: str = "skipped") -> str:
    """A short multi-line report: the count, then one line per skipped item."""
    if not skipped:
        return f"{title}: none"
    lines = [f"{title}: {len(skipped)}"]
    lines += [f"  - {item}" for item in skipped]
    return "\n".join(lines)


class DecoderUnavailable(RuntimeError):
    """The decoding backend asked for cannot run on this machine (DALI not installed, no GPU or
    no NVDEC); the message names the option that chooses another one."""
