"""Sweep suites as data: named lists of settings, built from a ``Plan`` and the MACs of a full and a
cached call (the fewer-steps baselines are placed at the MACs of the cached settings).

Suites (the paper's tables, and beyond):
  interval   DeepCache at each interval N, at the plan's branch (paper Table 2)
  zeros      the cached feature replaced by zeros at N = 5 (Table 5: quality should collapse)
  steps      uncached sampling with fewer steps at the MACs of each N (Tables 4 and 6)
  curve      uncached sampling at fixed step counts: the quality against the step count
  schedules  non-uniform, adaptive and cool-down schedules at the budgets of the plan (issue 5)
  forecast   the deep feature forecast from the last 2 and 3 full steps instead of replayed, uniform
             and adaptive, at the budgets of the plan (issue 15)
  times      the forecast of orders 2 and 3 in each variable a solver steps in (timestep, sigma, lambda),
             uniform at each interval of the plan (issue 27)
  fit        the forecast of orders 2 and 3 in the timestep and fitted on the shallow feature (its
             weights per sample from the fresh shallow feature), and of order 3 anchored (fitted, and
             reproducing the timestep), uniform at each interval of the plan
  phases     per-phase cuts: the plan's branch in the first half of the run and another in the
             second, and the reverse, beside each branch alone; the forecast of order 3 in
             the timestep and replay, uniform at each interval of the plan (the other branches: the
             grid's, else the plan's branch + 2); and the phased forecast through full steps'
             features only (``refresh=False``, named ``-kept``)
  branch     every branch at N = 5 (Table 12)
  grid       every interval x branch x schedule of the plan, and the plan's extra step counts

Every suite starts from the uncached baseline (the plan's `baseline` steps); settings over another step
count than the baseline's are named ``s<T>-...``.

Example:
    >>> plan = Plan(steps=20, intervals=(2,))
    >>> [s.name for s in build(["interval", "curve"], plan, full_macs=10, cached_macs=5, branches=6)]
    ['ddim-100', 's20-N2-b2', 'ddim-50', 'ddim-30', 'ddim-20', 'ddim-10']
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from .config import DeepCacheConfig
from .metrics import average_macs
from .rows import Setting


def cooldown_for_budget(n: int, steps: int = 100) -> dict:
    """Uniform at the smallest interval above N that leaves budget for some last steps full, plus as
    many last steps full as make the budget of ceil(steps / N): caching inside a window that ends early.

    Example:
        >>> cooldown_for_budget(5)
        {'interval': 6, 'cooldown': 3}
    """
    budget = DeepCacheConfig(n).budget(steps)
    for m in range(n + 1, steps):
        for c in range(1, steps):
            if len(DeepCacheConfig(m, cooldown=c).full_steps_for(steps)) == budget:
                return dict(interval=m, cooldown=c)
    raise ValueError(f"no cool-down schedule with {budget} full steps")


#: Beyond uniform, at each budget N of a T-step run (issue 5): label -> (N, T) -> config fields. The
#: centre 0.4 T and the cap N + 2 were picked by PSNR to the 100-step output on 32 held-out seeds
#: (10000+) of the MNIST DDPM, not on the FID seeds (scripts/schedule_proxy.py).
SCHEDULES: dict[str, Callable[[int, int], dict]] = {
    "nonuniform-c40": lambda n, t: dict(schedule="non-uniform", center=round(0.4 * t)),
    "adaptive-cap": lambda n, t: dict(schedule="adaptive", max_cached=n + 2),
    "nonuniform": lambda n, t: dict(schedule="non-uniform"),  # the paper's: centre 15, power 1.4
    "adaptive": lambda n, t: dict(schedule="adaptive"),
    "cooldown": cooldown_for_budget,
}


@dataclass(frozen=True)
class Plan:
    """What the suites vary around: the baseline's steps, the step count T that DeepCache
    accelerates, the branch, the intervals (interval and grid suites), the budgets (schedules suite),
    the fixed step counts of the curve suite, the branches and schedules of the grid suite, and the
    sampler's short name, which names the uncached settings (``ddim-50``)."""

    steps: int = 100
    branch: int = 2
    intervals: tuple[int, ...] = (2, 3, 5, 10)
    budgets: tuple[int, ...] = (5, 10)
    curve: tuple[int, ...] = (50, 30, 20, 10)
    baseline: int = 100
    branches: tuple[int, ...] = ()
    schedules: tuple[str, ...] = ("uniform",)
    sampler: str = "ddim"

    def uncached(self, steps: int) -> Setting:
        return Setting(f"{self.sampler}-{steps}", steps)

    def name(self, name: str) -> str:
        return name if self.steps == self.baseline else f"s{self.steps}-{name}"

    def deepcache(self, name: str, interval: int, branch: int | None = None, **options) -> Setting:
        """A DeepCache setting over the plan's steps, at the plan's branch unless told."""
        branch = self.branch if branch is None else branch
        return Setting(
            self.name(name), self.steps, DeepCacheConfig(interval=interval, branch=branch, **options)
        )

    def fewer_steps(self, full_macs: float, cached_macs: float) -> list[int]:
        """Uncached step counts whose MACs match the plan's DeepCache runs at each interval."""
        t = self.steps
        avg = [average_macs(full_macs, cached_macs, DeepCacheConfig(n).budget(t), t) for n in self.intervals]
        return [round(t * a / full_macs) for a in avg]


def _grid(plan: Plan) -> list[Setting]:
    combos = itertools.product(plan.intervals, plan.branches or (plan.branch,), plan.schedules)
    return [plan.deepcache(f"N{n}-b{b}-{s}", n, b, schedule=s) for n, b, s in combos]


#: Forecast orders of the forecast suite (order 1 is the replay of the interval and schedules suites).
FORECAST_ORDERS = (2, 3)

#: suite name -> (plan, full MACs, cached MACs at the plan's branch, branch count) -> settings
SUITES: dict[str, Callable[[Plan, float, float, int], list[Setting]]] = {
    "interval": lambda p, f, c, nb: [p.deepcache(f"N{n}-b{p.branch}", n) for n in p.intervals],
    "zeros": lambda p, f, c, nb: [p.deepcache(f"N5-b{p.branch}-zeros", 5, reuse="zeros")],
    "steps": lambda p, f, c, nb: [p.uncached(k) for k in p.fewer_steps(f, c)],
    "curve": lambda p, f, c, nb: [p.uncached(k) for k in p.curve],
    "schedules": lambda p, f, c, nb: [
        p.deepcache(f"N{n}-b{p.branch}-{label}", **{"interval": n, **options(n, p.steps)})
        for label, options in SCHEDULES.items()
        for n in p.budgets
    ],
    "forecast": lambda p, f, c, nb: [
        p.deepcache(
            f"N{n}-b{p.branch}{'-adaptive' if s == 'adaptive' else ''}-f{k}",
            n,
            schedule=s,
            reuse="forecast",
            order=k,
        )
        for n in p.budgets
        for s in ("uniform", "adaptive")
        for k in FORECAST_ORDERS
    ],  # fmt: skip
    "times": lambda p, f, c, nb: [
        p.deepcache(f"N{n}-b{p.branch}-f{k}-{time}", n, reuse="forecast", order=k, time=time)
        for n in p.intervals
        for k in FORECAST_ORDERS
        for time in ("timestep", "sigma", "lambda")  # not "step": the timestep's poorer twin on even steps
    ],
    "fit": lambda p, f, c, nb: [
        p.deepcache(f"N{n}-b{p.branch}-f{k}-{time}", n, reuse="forecast", order=k, time=time)
        for n in p.intervals
        for k in FORECAST_ORDERS
        for time in ("timestep", "shallow", "anchored")
        if (k, time) != (2, "anchored")  # the timestep's line
    ],
    "phases": lambda p, f, c, nb: [
        p.deepcache(
            f"N{n}-b{b}{f'-late{late}' if late is not None else ''}{suffix}",
            n,
            b,
            phases=None if late is None else ((0.5, late),),
            **act,
        )
        for n in p.intervals
        for other in [o for o in p.branches or (min(p.branch + 2, nb - 1),) if o != p.branch]
        for suffix, act in PHASE_ACTS
        for b, late in ((p.branch, other), (other, p.branch), (p.branch, None), (other, None))
        if late is not None or "refresh" not in act
    ],  # fmt: skip
    "branch": lambda p, f, c, nb: [p.deepcache(f"N5-b{i}", 5, i) for i in range(nb)],
    "grid": lambda p, f, c, nb: _grid(p),
}


#: The acts of suite ``phases``: the order-3 forecast, replay, and the forecast through full steps'
#: features only (phased settings).
PHASE_ACTS = (
    ("-f3-timestep", dict(reuse="forecast", order=3)),
    ("", {}),
    ("-f3-timestep-kept", dict(reuse="forecast", order=3, refresh=False)),
)


def build(suites, plan: Plan, full_macs: float, cached_macs: float, branches: int) -> list[Setting]:
    """The settings of ``suites`` in order, after the uncached baseline; a name appears once."""
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown suites {', '.join(unknown)}; known: {', '.join(SUITES)}")
    out = [plan.uncached(plan.baseline)]
    out += [s for name in suites for s in SUITES[name](plan, full_macs, cached_macs, branches)]
    return list({s.name: s for s in out}.values())
