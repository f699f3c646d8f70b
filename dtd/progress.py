"""Progress bars for long root searches, quiet where nobody watches.

The in-region root finders can run for minutes on large batches.  They
report progress through :func:`progress`: a ``tqdm`` bar on the standard
error that appears only once the work has taken :data:`PROGRESS_DELAY`
seconds, and never when standard error is not a terminal or the ``CI``
environment variable is set (logs of batch jobs stay clean).
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

__all__ = ["PROGRESS_DELAY", "progress", "progress_enabled"]

#: Seconds of work before a bar appears (short searches never show one).
PROGRESS_DELAY = 3.0


def progress_enabled() -> bool:
    """Whether bars may be shown: standard error is a terminal and ``CI`` is not set."""
    if os.environ.get("CI"):
        return False
    stream = sys.stderr
    return stream is not None and hasattr(stream, "isatty") and stream.isatty()


def progress(total: int, description: str) -> tqdm:
    """A bar over ``total`` units of work (call ``update(n)``; use as a context manager)."""
    return tqdm(total=total, desc=description, delay=PROGRESS_DELAY, disable=not progress_enabled(), leave=False)
