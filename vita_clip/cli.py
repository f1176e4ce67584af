"""What the command-line tools (``train``, ``eval``, ``predict``) share: a user error is one line
on stderr naming the key or file and what was expected, exit code 2, no traceback; ``--debug``
shows the traceback instead.

    parser = argparse.ArgumentParser(...)
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    with user_errors(parser.prog, args.debug):
        ...  # build the config, load the model, run
"""
from __future__ import annotations

import argparse
import contextlib
import sys

from .data.errors import DecoderUnavailable, VideoDataError
from .errors import CheckpointMismatchError, PretrainedWeightsUnavailable

# What a user can cause and fix: bad values, missing or unreadable files, checkpoints that do
# not fit, weights that are not available offline, a decoder this machine lacks. Anything else
# is a bug and keeps its traceback.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
               CheckpointMismatchError, PretrainedWeightsUnavailable, VideoDataError, DecoderUnavailable)
EXIT_USER_ERROR = 2


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")


def one_line(err: BaseException) -> str:
    """The error's message on one line (multi-line listings joined with ``; ``)."""
    text = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else str(err)
    parts = [part.strip() for part in str(text).splitlines() if part.strip()]
    if "Original Traceback (most recent call last):" in parts:
        # re-raised from a DataLoader worker: the worker's own last line is the message
        parts = [parts[-1].split(": ", 1)[-1]]
    return "; ".join(parts) or type(err).__name__


@contextlib.contextmanager
def user_errors(prog: str, debug: bool = False, pretrained_flag: str = "--pretrained PATH"):
    """Turn a user error raised inside into ``prog: error: <one line>`` and exit code 2.

    ``pretrained_flag``: how this tool takes a local weights file (``PATH`` is the file), named when
    CLIP weights are not available (the library's message speaks of ``pretrained=...``)."""
    try:
        yield
    except USER_ERRORS as err:
        if debug:
            raise
        message = one_line(err)
        if isinstance(err, PretrainedWeightsUnavailable):
            message = message.replace("pass pretrained='/path/to/checkpoint'",
                                      "pass " + pretrained_flag.replace("PATH", "/path/to/checkpoint"))
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
