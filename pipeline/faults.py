"""Resource faults a batch job must survive: out of memory (halve the batch) and a full disk.

Only the standard library is imported here; torch is imported lazily where memory is released,
so the CLI can classify a full disk without loading a model library.
"""

from __future__ import annotations

import errno
import gc
import logging
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# torch raises a plain RuntimeError when the host allocator fails, and torch.OutOfMemoryError
# (a RuntimeError too) for CUDA; the messages are the only stable way to tell them apart.
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory",
                 "defaultcpuallocator")
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device (CUDA) or host allocation failure, whatever library raised it."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


def is_disk_full(exc: BaseException) -> bool:
    """True for "no space left on device" / "disk quota exceeded", also when pyarrow or a
    library re-raised it with the errno only in its message."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return True
    text = str(exc).lower()
    return isinstance(exc, OSError) and ("no space left on device" in text or "quota exceeded" in text)


def release_memory(device: str) -> None:
    """Give freed tensors back before retrying smaller: Python garbage first, then CUDA's cache."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def in_fitting_batches(call: Callable[[int, int], T], n: int, limit: int | None, *,
                       device: str = "cpu") -> tuple[list[T], int | None]:
    """Run `call(start, stop)` over rows [0, n) in chunks of at most `limit` rows (None: all).

    On out of memory the chunk is halved and tried again; a single row that still does not
    fit re-raises. Returns the results in row order and the limit that worked, which the
    caller keeps so that later batches start at the size that fits.
    """
    results: list[T] = []
    start, size, halved = 0, min(limit or n, n), False
    while start < n:
        stop = min(start + size, n)
        try:
            results.append(call(start, stop))
            start = stop
            continue
        except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(exc) or stop - start == 1:
                raise
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        # Released outside the handler: the traceback's frames no longer hold the batch's tensors.
        release_memory(device)
        size, halved = max(1, (stop - start) // 2), True
        log.warning("out of memory on a batch of %d (%s); going on with batches of %d", stop - start, reason, size)
    return results, (size if halved else limit)
