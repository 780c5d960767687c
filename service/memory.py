"""Handing freed memory back to the operating system: large blocks at once, the rest when the model goes idle.

Images of many sizes make the forward pass allocate tensors of many sizes; glibc keeps what is freed in its
heaps, so a long-running server's resident memory creeps up although nothing leaks. ``malloc_trim`` returns
it. Trimming after every batch would make the next batch fault its pages back in (measured: ~40% slower on
varied shapes), so the batcher calls this only once the model has been idle for a second.

Large blocks (request bodies, bitmaps being decoded) are another matter: glibc raises its mmap threshold each
time such a block is freed, up to 32 MB, after which 20 MB bodies and 144 MB bitmaps come from the heaps and
stay resident; under a steady flood the service is never idle long enough to trim. ``keep_large_blocks_out_of_heaps``
fixes the threshold, so that every block over 256 KiB is mapped on its own and unmapped when freed (measured
with two malloc arenas instead of one per thread: under 20 s of bench/hostile.py, 634 -> 422 MB peak).
"""

import ctypes
import ctypes.util

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameters (malloc.h)
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 256 * 1024


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name is not None else None


def keep_large_blocks_out_of_heaps() -> bool:
    """Blocks over 256 KiB mapped on their own, at most two heaps; False where this is not glibc."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_ARENA_MAX, 2))


class MemoryTrimmer:
    def __init__(self) -> None:
        self._trim = getattr(_libc(), "malloc_trim", None)  # glibc only; elsewhere this does nothing
        self.trims = 0

    def __call__(self) -> None:
        if self._trim is not None:
            self._trim(0)
            self.trims += 1
