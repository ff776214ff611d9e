"""The DeepCache configuration: a frozen, validated dataclass.

Example:
    >>> cfg = DeepCacheConfig(interval=3, branch=0)
    >>> [s for s in range(8) if cfg.full_step_rule(num_steps=8)(s)]
    [0, 3, 6]
    >>> DeepCacheConfig(interval=0)
    Traceback (most recent call last):
    ...
    ValueError: interval must be an integer >= 1 (1 = no caching), got 0

A forecast instead of a replay, and a bad value:

    >>> DeepCacheConfig(interval=5, reuse="forecast").order
    2
    >>> DeepCacheConfig(interval=5, order=3)
    Traceback (most recent call last):
    ...
    ValueError: order is only used with reuse='forecast', not 'cache'

Refinements add full steps to any static schedule:

    >>> cfg = DeepCacheConfig(interval=4, warmup=2, cooldown=1, max_cached=2)
    >>> cfg.full_steps_for(12)
    (0, 1, 4, 7, 8, 11)
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from dataclasses import dataclass

from . import schedule

#: Schedule names; "non-uniform" is the paper's quadratic schedule around a centre step (Section 3.3);
#: "adaptive" decides at run time from how much the shallow feature has changed.
SCHEDULES = ("uniform", "non-uniform", "explicit", "adaptive")
#: What a cached step hands the shallow branch (``cachediff.acts.act_for``).
REUSE = ("cache", "forecast", "zeros")
#: The variables a forecast extrapolates in (``cachediff.clock.StepClock.call_time``).
FORECAST_TIMES = ("timestep", "step", "sigma", "lambda", "shallow", "anchored")


@dataclass(frozen=True)
class DeepCacheConfig:
    """How to cache.

    Args:
        interval: cache interval N: one full step every N steps on average (1 = no caching). For the
            adaptive schedule without a ``threshold``, N sets the budget of ceil(T / N) full steps,
            placed where the shallow feature drifts most (see ``DeepCacheEngine._threshold``).
        branch: skip branch id b (official ``cache_branch_id``; the paper's branch is b + 1).
            0 is the shallowest and fastest; valid ids depend on the U-Net (SD 1.x: 0..11).
        schedule: "uniform" (full steps 0, N, 2N, ...), "non-uniform" (the paper's quadratic schedule,
            ceil(T / N) full steps densest around ``center``), "explicit" (``full_steps``), or
            "adaptive" (a full step when the shallow feature has drifted enough since the last one).
        center: centre step of the non-uniform schedule.
        power: exponent of the non-uniform schedule (> 1).
        symmetric: non-uniform only: use the mirror-symmetric reading instead of the official code's.
        full_steps: the full steps of the "explicit" schedule (step 0 is always full), as step indices
            or as a mask string such as ``"FCCFCCF"``.
        reuse: what a cached step feeds the shallow branch: "cache" (DeepCache: the deep feature of
            the last full step), "forecast" (the polynomial through the deep features of the last
            ``order`` full steps, evaluated at the cached step's time: ``cachediff.acts.Forecast``)
            or "zeros" (the paper's Table 5 ablation, which shows that the cached feature matters).
        order: forecast only: how many full steps' features the forecast passes through (1 = replay,
            2 = linear, 3 = quadratic extrapolation); default 2.
        time: forecast only: the variable the features are extrapolated in: "timestep" (the
            scheduler's timesteps, which need not be evenly spaced; a bare model's numeric timestep
            argument), "step" (the step index), or the timestep's noise level: "sigma" (Euler's and
            the k-diffusion samplers' variable) or "lambda" (log(alpha / sigma), DPM-Solver's); these
            two need the scheduler's ``alphas_cumprod`` (or ``noise_levels`` given to ``sampling_run``);
            or "shallow": the shallow feature itself, computed afresh on the cached call; per sample,
            the affine weights of the kept features are those whose combination of the kept shallow
            features is nearest the fresh one (``cachediff.acts.fitted_weights``); or "anchored": the
            same fit constrained to reproduce the timestep (order 2: the timestep's line; order 3 and
            4: the freedom left, fitted).
        fallback: forecast only: check the forecast on the shallow feature each cached step and
            replay where extrapolating the shallow feature the same way misses it by more than
            replaying it does (``cachediff.acts.Forecast``); default False.
        window: cache only inside ``(start, end)``; ints are step indices, floats fractions of the run.
        warmup: the first ``warmup`` steps are full.
        cooldown: the last ``cooldown`` steps are full.
        max_cached: at most this many cached steps in a row.
        threshold: adaptive only: the accumulated relative change of the shallow feature (mean
            absolute change over mean absolute value, summed over steps since the last full step) that
            triggers a full step. ``None`` uses the calibration-free budget rule of ``interval``.
        phases: per-phase cuts: ``((start, branch), ...)``: from step ``start`` on (an int step, or
            a float fraction of the run) a cached step skips from that branch
            (``cachediff.schedule.cuts``); e.g. ``branch=0, phases=((0.5, 2),)``: cached steps of the
            first half cut at branch 0, of the second half at branch 2. Each branch's deep feature is
            kept apart; a cached step cut at c runs what lies between c and any shallower cut, and
            keeps those cuts' deep features afresh. Static schedules, and acts that need no probe
            (replay, zeros, a forecast in a time variable without ``fallback``).
        refresh: phases only: ``False`` keeps each cut's deep feature from full steps only, so that a
            shallower cut's group, which also runs on cached steps cut deeper, hands its forecast only
            points computed by the whole U-Net (default ``None``: kept afresh wherever it runs).
    """

    interval: int = 3
    branch: int = 0
    schedule: str = "uniform"
    center: int = 15
    power: float = 1.4
    symmetric: bool = False
    full_steps: tuple[int, ...] | str | None = None
    reuse: str = "cache"
    order: int | None = None
    time: str | None = None
    fallback: bool | None = None
    window: tuple[float, float] | None = None
    warmup: int = 0
    cooldown: int = 0
    max_cached: int | None = None
    threshold: float | None = None
    phases: tuple[tuple[float, int], ...] | None = None
    refresh: bool | None = None

    def __post_init__(self) -> None:
        for name in ("interval", "branch", "order", "center", "warmup", "cooldown", "max_cached"):
            object.__setattr__(self, name, _plain_int(getattr(self, name)))  # numpy integers too
        if isinstance(self.window, (tuple, list)):
            object.__setattr__(self, "window", tuple(_plain_int(v) for v in self.window))
        if not _is_int(self.interval) or self.interval < 1:
            raise ValueError(f"interval must be an integer >= 1 (1 = no caching), got {self.interval!r}")
        if not _is_int(self.branch) or self.branch < 0:
            raise ValueError(f"branch must be an integer >= 0 (0 = shallowest skip), got {self.branch!r}")
        if self.reuse not in REUSE:
            raise ValueError(f"reuse must be one of {', '.join(map(repr, REUSE))}; got {self.reuse!r}")
        self._check_forecast()
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        if self.schedule == "non-uniform":
            if not _is_int(self.center) or self.center < 0:
                raise ValueError(f"center must be an integer >= 0, got {self.center!r}")
            if not self.power > 1:
                raise ValueError(f"power must be > 1, got {self.power!r}")
        if self.schedule == "explicit":
            if self.full_steps is None:
                raise ValueError("schedule 'explicit' needs full_steps, e.g. full_steps=(0, 4, 9) or 'FCCCF'")
            steps = self.full_steps
            steps = schedule.from_mask(steps) if isinstance(steps, str) else schedule.explicit(steps)
            object.__setattr__(self, "full_steps", steps)
        elif self.full_steps is not None:
            raise ValueError(f"full_steps is only used with schedule='explicit', not {self.schedule!r}")
        self._check_refinements()
        self._check_phases()

    def _check_phases(self) -> None:
        if self.refresh is not None and (self.phases is None or not isinstance(self.refresh, bool)):
            raise ValueError(f"refresh is True or False, with phases only; got {self.refresh!r}")
        if self.phases is None:
            return
        phases = tuple(
            (p[0], _plain_int(p[1])) for p in self.phases if isinstance(p, (tuple, list)) and len(p) == 2
        )
        starts = [s for s, _ in phases]
        if (
            not phases
            or len(phases) != len(self.phases)
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) and s >= 0 for s in starts)
            or not all(_is_int(b) and b >= 0 for _, b in phases)
        ):
            raise ValueError(
                f"phases must be ((start, branch), ...) with starts and branches >= 0, got {self.phases!r}"
            )
        if self.adaptive or self.time in ("shallow", "anchored") or self.fallback:
            raise ValueError(
                "phases take a static schedule and an act without the probe (replay, zeros, or a "
                "forecast in the timestep, step, sigma or lambda without fallback)"
            )
        object.__setattr__(self, "phases", phases)

    @property
    def branches(self) -> tuple[int, ...]:
        """The branches that cached steps cut at: ``branch`` and each phase's, deepest first."""
        return tuple(sorted({self.branch, *(b for _, b in self.phases or ())}, reverse=True))

    def cut_rule(self, num_steps: int | None = None) -> Callable[[int], int]:
        """A map ``step -> the branch a cached step cuts at`` for a run of ``num_steps`` steps."""
        branch, phases = self.branch, self.phases or ()
        if num_steps is not None:
            return schedule.cuts(num_steps, branch, phases).__getitem__
        if any(isinstance(start, float) for start, _ in phases):
            raise ValueError(
                "phases that start at a fraction of the run need the number of steps; use a pipeline "
                "(whose scheduler tells it) or call engine.reset(num_steps=...)"
            )
        return lambda step: next((b for start, b in reversed(phases) if step >= start), branch)

    def _check_forecast(self) -> None:
        if self.reuse != "forecast":
            given = [k for k in ("order", "time", "fallback") if getattr(self, k) is not None]
            if given:
                verb = "are" if len(given) > 1 else "is"
                raise ValueError(
                    f"{', '.join(given)} {verb} only used with reuse='forecast', not {self.reuse!r}"
                )
            return
        order = 2 if self.order is None else self.order
        if not _is_int(order) or not 1 <= order <= 4:
            raise ValueError(f"order must be an integer in 1..4 (1 = replay), got {self.order!r}")
        time = self.time or "timestep"
        if time not in FORECAST_TIMES:
            raise ValueError(f"time must be one of {', '.join(map(repr, FORECAST_TIMES))}; got {self.time!r}")
        if self.fallback not in (None, True, False):
            raise ValueError(f"fallback must be True or False, got {self.fallback!r}")
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "time", time)
        object.__setattr__(self, "fallback", bool(self.fallback))

    def _check_refinements(self) -> None:
        for name in ("warmup", "cooldown"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if self.max_cached is not None and (not _is_int(self.max_cached) or self.max_cached < 0):
            raise ValueError(f"max_cached must be an integer >= 0 or None, got {self.max_cached!r}")
        if self.window is not None:
            window = tuple(self.window)
            if len(window) != 2 or not all(isinstance(v, (int, float)) and v >= 0 for v in window):
                raise ValueError(f"window must be (start, end) with values >= 0, got {self.window!r}")
            object.__setattr__(self, "window", window)
        if self.threshold is not None:
            if self.interval == 1:
                raise ValueError("interval 1 means no caching; leave out threshold or give interval >= 2")
            if self.schedule != "adaptive":
                raise ValueError(f"threshold is only used with schedule='adaptive', not {self.schedule!r}")
            if not self.threshold > 0:
                raise ValueError(f"threshold must be > 0, got {self.threshold!r}")

    @property
    def adaptive(self) -> bool:
        """Whether full steps are decided at run time: the adaptive schedule at an interval above 1
        (at interval 1 every step is full, whatever the schedule but an explicit one)."""
        return self.schedule == "adaptive" and self.interval > 1

    @property
    def refined(self) -> bool:
        """Whether a window, warm-up, cool-down or cap refines the base schedule."""
        return bool(self.window is not None or self.warmup or self.cooldown or self.max_cached is not None)

    def replace(self, **changes) -> DeepCacheConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def budget(self, num_steps: int) -> int:
        """Full steps that the interval allows in a run of ``num_steps``: ceil(T / N) (the non-uniform
        and adaptive schedules spend it; the uniform one takes exactly these)."""
        return schedule.num_full_steps(num_steps, self.interval)

    def full_steps_for(self, num_steps: int) -> tuple[int, ...]:
        """The full steps of a run of ``num_steps`` steps (static schedules only)."""
        if self.adaptive:
            raise ValueError("the adaptive schedule decides at run time; see engine.stats after a run")
        if self.schedule == "explicit":
            base = self.full_steps
        elif self.schedule in ("uniform", "adaptive") or self.interval == 1:
            base = schedule.uniform(num_steps, self.interval)
        else:
            base = schedule.quadratic_center(
                num_steps, self.budget(num_steps), min(self.center, num_steps - 1), self.power, self.symmetric
            )
        return schedule.compose(num_steps, base, self.window, self.warmup, self.cooldown, self.max_cached)

    def forced_full_steps(self, num_steps: int) -> tuple[int, ...]:
        """Steps that the refinements make full whatever the base schedule says (no cap)."""
        return schedule.compose(num_steps, (0,), self.window, self.warmup, self.cooldown)

    def full_step_rule(self, num_steps: int | None = None) -> Callable[[int], bool]:
        """A predicate ``step -> is a full step`` for a run of ``num_steps`` steps (static schedules).

        Unrefined uniform and explicit schedules need no run length; the others do.
        """
        if self.interval == 1 and self.schedule != "explicit":
            return lambda step: True
        if not self.refined and self.schedule == "uniform":
            interval = self.interval
            return lambda step: step % interval == 0
        if not self.refined and self.schedule == "explicit":
            return frozenset(self.full_steps).__contains__
        if num_steps is None:
            raise ValueError(
                f"the {self.schedule} schedule{' with refinements' if self.refined else ''} needs the "
                "number of steps; use a pipeline (whose scheduler tells it) or call "
                "engine.reset(num_steps=...)"
            )
        return frozenset(self.full_steps_for(num_steps)).__contains__


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _plain_int(v):
    """A Python ``int`` for any integer that is not a bool (``numpy.int64(3)`` -> 3); else ``v``."""
    return int(v) if isinstance(v, numbers.Integral) and not isinstance(v, bool) else v
