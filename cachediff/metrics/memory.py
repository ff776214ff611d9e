"""Peak memory of one call, above the memory in use before it: CUDA allocator statistics on a GPU,
the kernel's resettable peak resident set (``VmHWM``) on a Linux CPU.

On a CPU, glibc keeps freed memory of large blocks for reuse unless their size is below a fixed
``mmap`` threshold; ``return_freed_memory()`` fixes that threshold so that freed tensors leave the
resident set and each call's peak is its own.

Call ``return_freed_memory()`` first thing in the process: memory freed before it can stay resident
and be reused without counting. The figure is exact only in a quiet process (other threads'
allocations move it); ``tests/test_memory.py`` measures in a fresh interpreter.

Example:
    >>> return_freed_memory()
    True
    >>> peak = peak_memory(lambda: bytearray(64 * 2**20))  # about 64 MiB in a fresh process
    >>> peak is None or isinstance(peak, int)
    True
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable
from pathlib import Path

import torch

_STATUS, _CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")
_M_MMAP_THRESHOLD = -3  # mallopt parameter
_RESET_SLACK_KIB = 8 * 1024


def return_freed_memory(threshold: int = 1 << 16) -> bool:
    """Serve allocations of ``threshold`` bytes or more by ``mmap`` (returned to the system on free),
    fixing glibc's threshold, which otherwise grows; ``False`` where glibc is not the allocator."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def _kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), flags=re.M).group(1))


def peak_memory(fn: Callable[[], object], device: str | torch.device = "cpu") -> int | None:
    """Bytes by which memory in use rose at its peak during ``fn()``; ``None`` where it cannot be
    measured (a CPU without Linux's ``/proc``)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM, the peak resident set, to the current one
        before = _kib("VmRSS")
    except OSError:
        return None
    if _kib("VmHWM") > before + _RESET_SLACK_KIB:  # a kernel or sandbox that ignores the reset
        return None
    fn()
    return (_kib("VmHWM") - before) * 1024
