"""Wall time measured fairly: warm-up, device synchronisation, interleaved repeats (A B A B ...), medians.

Example:
    >>> times = interleaved({"a": lambda: sum(range(1000)), "b": lambda: sum(range(10))}, repeats=3)
    >>> sorted(times), len(times["a"])
    (['a', 'b'], 3)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int = 3, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each function, calling them in turn ``repeats`` times after ``warmup`` rounds.

    The order rotates each round (A B C, B C A, C A B, ...), so that no function always runs right after
    the same other one and inherits its allocator, cache and clock state.

    Example:
        >>> calls = []
        >>> times = interleaved({k: lambda k=k: calls.append(k) for k in "ABC"}, repeats=2, warmup=1)
        >>> "".join(calls), [len(t) for t in times.values()]
        ('ABCBCACAB', [2, 2, 2])
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(warmup + repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = fns[name]
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def speedup(baseline: list[float], accelerated: list[float]) -> float:
    """Median of the baseline times over median of the accelerated ones."""
    return statistics.median(baseline) / statistics.median(accelerated)
