"""Running small tensor work on one intra-op thread, leaving the caller's setting as it was.

Walks of tiny tensors (the Metropolis-Hastings finder), the conformance kit's
many small calls and the digits training spend most of their time
synchronising torch's intra-op threads on a busy machine; one thread is
several times faster there and, for training, makes every bit of the result
independent of the machine's core count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["one_thread"]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch's intra-op thread count is 1 inside the block and the caller's again after it (also on an error)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
