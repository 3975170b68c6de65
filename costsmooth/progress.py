"""Progress bars: tqdm on a terminal; without one (a CI or batch-job log), whole lines at most every
``LOG_INTERVAL`` seconds and at the end, instead of thousands of carriage-return updates."""
from __future__ import annotations

import sys

from tqdm import tqdm

__all__ = ["progress_bar", "LOG_INTERVAL"]

LOG_INTERVAL = 30.0  # seconds between progress lines when the output is not a terminal


class _Lines:
    """A stream for tqdm that turns each carriage-return redraw into one line and drops blank ones."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        for part in text.replace("\n", "\r").split("\r"):
            if part.strip():
                self.stream.write(part.rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(*args, file=None, **kwargs) -> tqdm:
    """``tqdm(*args, **kwargs)`` writing to ``file`` (default stderr); when ``file`` is not a terminal,
    one line every ``LOG_INTERVAL`` seconds and a last one at the end (a ``leave=False`` bar: lines only
    when it lasts longer than ``LOG_INTERVAL``)."""
    file = sys.stderr if file is None else file
    isatty = getattr(file, "isatty", None)
    if not (isatty is not None and isatty()):
        kwargs.update(mininterval=LOG_INTERVAL, maxinterval=LOG_INTERVAL, dynamic_ncols=False, ncols=100)
        if kwargs.get("leave") is False:  # a bar that vanishes when done (an epoch): only if it lasts
            kwargs["delay"] = LOG_INTERVAL
        file = _Lines(file)
    return tqdm(*args, file=file, **kwargs)
