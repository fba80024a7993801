"""The C allocator's handling of freed memory (glibc's ``mallopt``), set once per service process.

glibc hands blocks over ``M_MMAP_THRESHOLD`` to the kernel as mappings of their own and gives
freed memory at the top of a heap back past ``M_TRIM_THRESHOLD``; its defaults adapt to the
sizes it sees, and the service's multi-megabyte buffers kept falling outside them: a delivered
batch of 256 samples of 3x32x32 floats is 3 MB, read from SQLite on the log's thread, then made
into protobuf and a message on the event loop. Each such buffer touched fresh pages: 17.9 page
faults per delivered record, 52 us of system CPU per record against 39 of user CPU, on a 2-core
VM (``python -m pseudostream.benchmarks.drain --rounds 3``). With the thresholds set
(``mallopt(3)``; setting either turns the adaptation off) freed blocks stay for the next buffer:
0.75 faults and 8.6 us of system CPU per record, and one trainer drained the log 1.69 times as
fast (15488 against 9334 records/s). Samples of 256 bytes (the digits) fault rarely either way.
The cost is resident memory: up to ``keep_bytes`` per malloc arena that a burst freed and the
process keeps for its next one.

Environment variables glibc reads at start (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``,
or ``GLIBC_TUNABLES``) win: nothing is changed when any is set. Other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD_MAX"]

# mallopt(3) parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD_MAX = 32 << 20
_ENVIRONMENT = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory(keep_bytes: int) -> str:
    """Keep up to ``keep_bytes`` of freed memory at the top of each malloc heap, and serve
    blocks under ``min(keep_bytes, MMAP_THRESHOLD_MAX)`` from the heaps; returns what was done,
    for the log. ``keep_bytes`` 0 changes nothing."""
    if keep_bytes <= 0:
        return "glibc's defaults kept (keep_freed_memory_mib: 0)"
    given = [name for name in _ENVIRONMENT if name in os.environ]
    if given:
        return f"left to the environment ({', '.join(given)})"
    if platform.libc_ver()[0] != "glibc":
        return "not changed: the C library is not glibc"
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    keep = min(keep_bytes, (1 << 31) - 1)
    mmap_from = min(keep, MMAP_THRESHOLD_MAX)
    if not (mallopt(_M_MMAP_THRESHOLD, mmap_from) and mallopt(_M_TRIM_THRESHOLD, keep)):
        return "not changed: mallopt refused the thresholds"
    return f"freed memory kept up to {keep >> 20} MiB a heap; blocks under {mmap_from >> 20} MiB from the heaps"
