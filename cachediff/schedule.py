"""Schedules: pure functions that say which steps of a sampling run are *full* steps.

A *step* is one U-Net evaluation inside a sampling run (PLMS and Heun evaluate some timesteps twice:
those count as two steps). On a full step every block runs and the deep feature is stored; on every
other (*cached*) step only the shallow branch runs and the stored feature is reused. Step 0 is always
full, since there is nothing to reuse yet.

Nothing here touches a model; every function is deterministic and cheap.

Example:
    >>> uniform(10, 3)
    (0, 3, 6, 9)
    >>> quadratic_center(50, 10, center=15, power=1.4)
    (0, 5, 9, 13, 17, 21, 26, 31, 37, 43)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np


def num_full_steps(num_steps: int, interval: int) -> int:
    """Number of full steps a uniform schedule of ``interval`` takes in ``num_steps``: ceil(T / N)."""
    return math.ceil(num_steps / interval)


def uniform(num_steps: int, interval: int) -> tuple[int, ...]:
    """One full step every ``interval`` steps, starting at step 0 (paper Section 3.3, "uniform").

    Example:
        >>> uniform(7, 2)
        (0, 2, 4, 6)
    """
    _check_positive(num_steps=num_steps, interval=interval)
    return tuple(range(0, num_steps, interval))


def quadratic_center(
    num_steps: int, n_full: int, center: int = 15, power: float = 1.4, symmetric: bool = False
) -> tuple[int, ...]:
    """The paper's non-uniform schedule (Section 3.3, Eq. 7): full steps dense around ``center``.

    ``n_full`` points are spaced linearly in ``x`` from ``-center`` to ``T - center`` after the transform
    ``x -> x ** (1 / power)``, then mapped back with ``** power``. If rounding merges points, ``power``
    is lowered by 0.02 and the search retried, as the official code does.

    By default this reproduces the official ``sample_from_quad_center`` exactly, including a quirk: in
    Python ``(-center) ** (1 / power)`` is a complex number, and the official code casts the complex
    result to int, dropping the imaginary part, so the steps before ``center`` are not a mirror image
    of those after it. ``symmetric=True`` gives the reading ``floor(sign(x) * |x| ** power)`` instead.

    Args:
        num_steps: steps in the run, T.
        n_full: full steps wanted, usually ``ceil(T / N)``.
        center: the step around which full steps are densest.
        power: the exponent p > 1; larger means more concentrated around ``center``.
        symmetric: use the mirror-symmetric reading instead of the official one.

    Example:
        >>> quadratic_center(50, 10, center=15, power=1.4, symmetric=True)
        (0, 5, 10, 13, 15, 19, 24, 29, 35, 42)
    """
    _check_positive(num_steps=num_steps, n_full=n_full)
    if not 0 <= center < num_steps:
        raise ValueError(f"center must lie in [0, {num_steps}), got {center}")
    if power <= 1:
        raise ValueError(f"power must be > 1, got {power}")
    if n_full >= num_steps:
        return tuple(range(num_steps))
    p = power
    while p > 1:
        steps = _quad_center_once(num_steps, n_full, center, p, symmetric)
        if len(steps) == n_full:
            return steps
        p -= 0.02
    raise ValueError(
        f"no power <= {power} gives {n_full} distinct full steps in {num_steps} around {center}; "
        "lower the centre or the number of full steps"
    )


def _quad_center_once(num_steps: int, n_full: int, center: int, power: float, symmetric: bool):
    if symmetric:
        lo, hi = -(center ** (1 / power)), (num_steps - center) ** (1 / power)
        x = np.linspace(lo, hi, n_full + 1)
        y = np.sign(x) * np.abs(x) ** power
    else:  # the official arithmetic, complex numbers included
        lo, hi = complex(-center) ** (1 / power), (num_steps - center) ** (1 / power)
        y = np.linspace(lo, hi, n_full + 1) ** power
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's ComplexWarning: the official int cast drops imag
        y = np.floor(y) if symmetric else np.real(y)
        ints = np.unique(y.astype(np.int32))
    return tuple([0] + [int(v) + center for v in ints[1:-1]])


def quadratic_start(num_steps: int, n_full: int, power: float = 1.2) -> tuple[int, ...]:
    """The released LDM code's non-uniform schedule: no centre, dense at the start (high noise).

    ``unique(int(linspace(0, T ** (1/p), n+1) ** p))[:-1]``, lowering ``power`` by 0.02 until it
    yields ``n_full`` distinct steps.

    Example:
        >>> quadratic_start(50, 10, power=1.2)
        (0, 3, 7, 11, 16, 21, 27, 32, 38, 44)
    """
    _check_positive(num_steps=num_steps, n_full=n_full)
    if n_full >= num_steps:
        return tuple(range(num_steps))
    p = power
    while p > 1:
        x = np.linspace(0, num_steps ** (1 / p), n_full + 1)
        steps = np.unique((x**p).astype(np.int32))[:-1]
        if len(steps) == n_full:
            return tuple(int(s) for s in steps)
        p -= 0.02
    raise ValueError(f"no power <= {power} gives {n_full} distinct full steps in {num_steps}")


def explicit(steps: Iterable[int], num_steps: int | None = None) -> tuple[int, ...]:
    """A user-given set of full steps, sorted and deduplicated; step 0 is added if missing.

    Example:
        >>> explicit([10, 3, 3])
        (0, 3, 10)
    """
    out = sorted({int(s) for s in steps} | {0})
    if out and out[0] < 0:
        raise ValueError(f"full steps must be >= 0, got {out[0]}")
    if num_steps is not None:
        out = [s for s in out if s < num_steps]
    return tuple(out)


def from_mask(mask: str | Sequence[bool | int]) -> tuple[int, ...]:
    """Full steps from a per-step mask: "F"/1/True = full, "C"/0/False = cached (step 0 is full).

    Example:
        >>> from_mask("FCCFCCF"), from_mask([1, 0, 1, 1])
        ((0, 3, 6), (0, 2, 3))
    """
    if isinstance(mask, str):
        if set(mask.upper()) - {"F", "C"}:
            raise ValueError(f"a mask string holds only 'F' (full) and 'C' (cached), got {mask!r}")
        mask = [c == "F" for c in mask.upper()]
    return explicit(i for i, full in enumerate(mask) if full)


def resolve_window(window: tuple[float, float], num_steps: int) -> tuple[int, int]:
    """A caching window ``(start, end)`` as step indices: ints are steps, floats are fractions of T.

    Example:
        >>> resolve_window((0.1, 0.9), 50), resolve_window((5, 40), 50), resolve_window((0.2, 45), 50)
        ((5, 45), (5, 40), (10, 45))
    """
    start, end = (round(v * num_steps) if isinstance(v, float) else int(v) for v in window)
    if not 0 <= start <= end:
        raise ValueError(f"window must satisfy 0 <= start <= end, got {window} -> ({start}, {end})")
    return start, min(end, num_steps)


def compose(
    num_steps: int,
    full_steps: Iterable[int],
    window: tuple[float, float] | None = None,
    warmup: int = 0,
    cooldown: int = 0,
    max_cached: int | None = None,
) -> tuple[int, ...]:
    """Refine a schedule's full steps: cache only inside ``window``, the first ``warmup`` and the last
    ``cooldown`` steps full, and at most ``max_cached`` cached steps in a row.

    Each rule only adds full steps, so they compose with any base schedule in any order.

    Example:
        >>> compose(12, uniform(12, 4))
        (0, 4, 8)
        >>> compose(12, uniform(12, 4), warmup=2, cooldown=1)
        (0, 1, 4, 8, 11)
        >>> compose(12, uniform(12, 4), window=(0.25, 0.75))
        (0, 1, 2, 4, 8, 9, 10, 11)
        >>> compose(12, (0,), max_cached=3)
        (0, 4, 8)
    """
    _check_positive(num_steps=num_steps)
    for name, v in (("warmup", warmup), ("cooldown", cooldown)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    full = {s for s in full_steps if s < num_steps} | {0}
    full |= set(range(min(warmup, num_steps))) | set(range(max(num_steps - cooldown, 0), num_steps))
    if window is not None:
        start, end = resolve_window(window, num_steps)
        full |= set(range(start)) | set(range(end, num_steps))
    if max_cached is not None:
        full = set(cap_cached_run(num_steps, full, max_cached))
    return tuple(sorted(full))


def cuts(num_steps: int, branch: int, phases: Sequence[tuple[float, int]] = ()) -> tuple[int, ...]:
    """The branch each step of a run would cut at if cached: ``branch`` until the first phase starts,
    then each phase's ``(start, branch)`` from its start on (ints are steps, floats fractions of T).

    Example:
        >>> cuts(8, 0, [(0.5, 2)])
        (0, 0, 0, 0, 2, 2, 2, 2)
        >>> cuts(6, 3, [(2, 1), (4, 0)])
        (3, 3, 1, 1, 0, 0)
    """
    _check_positive(num_steps=num_steps)
    out = [branch] * num_steps
    for start, b in phases:
        first = round(start * num_steps) if isinstance(start, float) else int(start)
        out[first:] = [b] * max(num_steps - first, 0)
    return tuple(out)


def cap_cached_run(num_steps: int, full_steps: Iterable[int], max_cached: int) -> tuple[int, ...]:
    """Add full steps so that no more than ``max_cached`` cached steps follow each other.

    Example:
        >>> cap_cached_run(10, (0, 7), 2)
        (0, 3, 6, 7)
    """
    if not isinstance(max_cached, (int, np.integer)) or max_cached < 0:
        raise ValueError(f"max_cached must be an integer >= 0, got {max_cached!r}")
    given, out, run = set(full_steps), [], 0
    for step in range(num_steps):
        if step in given or step == 0 or run == max_cached:
            out.append(step)
            run = 0
        else:
            run += 1
    return tuple(out)


def ranges(steps: Sequence[int]) -> str:
    """Steps as compact ranges, for display.

    Example:
        >>> ranges((1, 2, 3, 5, 7, 8))
        '1-3, 5, 7-8'
    """
    out, i = [], 0
    while i < len(steps):
        j = i
        while j + 1 < len(steps) and steps[j + 1] == steps[j] + 1:
            j += 1
        out.append(f"{steps[i]}" if i == j else f"{steps[i]}-{steps[j]}")
        i = j + 1
    return ", ".join(out) or "none"


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
