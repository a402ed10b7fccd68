"""glibc malloc settings for PyTorch on the CPU.

With glibc's defaults, the multi-megabyte activations of parallel synthesis and training are
returned to the kernel when freed and page-faulted back on the next call: on the development
machine that doubled the tiny student's synthesis time (0.080 s -> 0.048 s per second of audio
with these settings; `wavedistill bench` measures both in one run). `tune_allocator()` keeps freed
memory in the process instead: buffers below 32 MB come from the heap (M_MMAP_THRESHOLD), the heap
grows in 512 MB steps (M_TOP_PAD, address space only until touched) and is given back only above
1 GB of free memory (M_TRIM_THRESHOLD). Every `wavedistill` command calls it; library users may.
Set WAVEDISTILL_MALLOC=default to keep glibc's behaviour. Not glibc (macOS, musl): does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 512 << 20}
_done = False


def tune_allocator() -> bool:
    """Apply the settings once per process; True when they are in effect."""
    global _done
    if _done:
        return True
    if os.environ.get("WAVEDISTILL_MALLOC", "").lower() == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    _done = all(mallopt(option, value) == 1 for option, value in SETTINGS.items())
    return _done
