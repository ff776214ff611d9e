"""Run statistics of an accelerator: one ``Call`` per denoiser call of the last run.

Example:
    >>> s = RunStats([Call(0, True, None, 2.0), Call(1, False, 0.1, 1.0)])
    >>> s.summary(full_macs=10.0, cached_macs=4.0)
    '2 calls: 1 full, 1 cached; realised speedup 1.33x; MACs saved 30.0%'
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import torch


class Stopwatch:
    """Times one call without synchronising the host: ``time.perf_counter`` on a CPU; on a GPU a pair
    of CUDA events, recorded in the stream and read (one synchronisation) the first time
    ``seconds`` is asked for, after the run.

    Example:
        >>> watch = Stopwatch(torch.device("cpu"))
        >>> watch.stop().seconds >= 0
        True
    """

    def __init__(self, device: torch.device):
        self._events = None
        if device.type == "cuda":
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self._events[0].record()
        self._start, self._seconds = time.perf_counter(), None

    def stop(self) -> Stopwatch:
        if self._events is not None:
            self._events[1].record()
        else:
            self._seconds = time.perf_counter() - self._start
        return self

    @property
    def seconds(self) -> float:
        if self._seconds is None:
            start, end = self._events
            end.synchronize()
            self._seconds = start.elapsed_time(end) / 1000
        return self._seconds


class Call(NamedTuple):
    """One denoiser call of a run. ``change`` and the time are read from the device only when asked
    for (``RunStats.changes``, ``seconds``), so that recording them costs no host synchronisation."""

    step: int
    full: bool
    change_value: float | torch.Tensor | None  # the shallow feature's change since the previous call
    elapsed: float | Stopwatch  # wall time of the call

    @property
    def change(self) -> float | None:
        """Relative change of the shallow feature since the previous call, if tracked."""
        value = self.change_value
        return float(value) if isinstance(value, torch.Tensor) else value

    @property
    def seconds(self) -> float:
        """Wall time of the call (on a GPU: between CUDA events around it)."""
        return self.elapsed.seconds if isinstance(self.elapsed, Stopwatch) else self.elapsed


@dataclass
class RunStats:
    """What the last run did: one ``Call`` per denoiser call.

    Example:
        >>> s = RunStats([Call(0, True, None, 2.0), Call(1, False, 0.1, 1.0), Call(2, False, 0.2, 1.0)])
        >>> s.pattern, s.n_full, s.n_cached, s.realised_speedup
        ('FCC', 1, 2, 1.5)
        >>> s.average_macs(full=10.0, cached=4.0)
        6.0
    """

    calls: list[Call] = field(default_factory=list)

    @property
    def n_full(self) -> int:
        """How many calls were full (``DeepCacheConfig.full_steps_for`` gives a schedule's step indices)."""
        return sum(c.full for c in self.calls)

    @property
    def n_cached(self) -> int:
        """How many calls were cached."""
        return len(self.calls) - self.n_full

    @property
    def full_steps(self) -> int:
        """Deprecated name of ``n_full`` (until 2026-12-02; ``full_steps_for`` gives step indices)."""
        warnings.warn("RunStats.full_steps is now n_full", DeprecationWarning, stacklevel=2)
        return self.n_full

    @property
    def cached_steps(self) -> int:
        """Deprecated name of ``n_cached``."""
        warnings.warn("RunStats.cached_steps is now n_cached", DeprecationWarning, stacklevel=2)
        return self.n_cached

    @property
    def pattern(self) -> str:
        """'F' for a full call, 'C' for a cached one, in call order."""
        return "".join("F" if c.full else "C" for c in self.calls)

    @property
    def changes(self) -> list[float | None]:
        """The per-call change metric (``None`` where it was not tracked)."""
        return [c.change for c in self.calls]

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.calls)

    @property
    def realised_speedup(self) -> float:
        """Time the run would take with every call full (median full call) over the time it took."""
        full = [c.seconds for c in self.calls if c.full]
        return len(self.calls) * statistics.median(full) / self.seconds if full and self.seconds else 1.0

    def average_macs(self, full: float, cached: float) -> float:
        """Average MACs per call, given the MACs of a full and of a cached call."""
        return average_macs(full, cached, self.n_full, len(self.calls))

    def summary(self, full_macs: float | None = None, cached_macs: float | None = None) -> str:
        """One line: calls, full/cached, realised speedup and, given MACs per call, MACs saved."""
        line = (
            f"{len(self.calls)} calls: {self.n_full} full, {self.n_cached} cached; "
            f"realised speedup {self.realised_speedup:.2f}x"
        )
        if full_macs is not None and cached_macs is not None and self.calls:
            saved = 1 - self.average_macs(full_macs, cached_macs) / full_macs
            line += f"; MACs saved {100 * saved:.1f}%"
        return line


def average_macs(full: int, cached: int, n_full: int, n_steps: int) -> float:
    """Average MACs per step of a run with ``n_full`` full steps out of ``n_steps``.

    Example:
        >>> average_macs(10, 2, n_full=1, n_steps=5)
        3.6
    """
    return (n_full * full + (n_steps - n_full) * cached) / max(n_steps, 1)
