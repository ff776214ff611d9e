"""Policies: per denoiser call, *full* or *cached* (the "decide" part of the caching core).

A policy sees the step index of the call and the ``History`` of its slot (what happened since the
last full call). ``Static`` policies are a rule of steps fixed before the run (uniform, non-uniform,
explicit, windows and refinements, all from ``cachediff.schedule``); the ``Adaptive`` policy leaves
some calls undecided (``None``) until the probe, the shallow feature that the cached call computes
anyway, has been measured (``History.observe``), and then ``resolve`` decides from how far it has
drifted. Deciding changes nothing: asking twice gives the same answer.

Example:
    >>> from cachediff.config import DeepCacheConfig
    >>> policy = policy_for(DeepCacheConfig(interval=3))
    >>> policy.start(num_steps=7)
    >>> [policy.decide(s, History()) for s in range(7)]
    [True, False, False, True, False, False, True]
    >>> adaptive = policy_for(DeepCacheConfig(interval=3, schedule="adaptive", threshold=0.5))
    >>> adaptive.start(num_steps=None)
    >>> history = History()
    >>> adaptive.decide(0, history), adaptive.decide(1, history)
    (True, None)
    >>> history.observe(0.3)
    >>> adaptive.resolve(1, history), adaptive.resolve(1, history)
    (False, False)
    >>> history.record(full=False); history.observe(0.3)
    >>> adaptive.resolve(2, history)
    True
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .config import DeepCacheConfig

#: A group's decision for one call: run and keep (FULL), hand out the act's result (CACHED), wait for
#: the probe (UNDECIDED), or run and keep nothing new (RUN: per-phase cuts with ``refresh=False``).
FULL, CACHED, UNDECIDED, RUN = True, False, None, "run"
Rule = Callable[[int], bool | str]  # step -> its decision (FULL, CACHED or RUN)


@dataclass
class History:
    """What one slot's run has done so far, as a policy needs it."""

    changes: list[float] = field(default_factory=list)  # every measured single-step change
    drift: float = 0.0  # accumulated change since the last full call
    cached_run: int = 0  # cached calls since the last full call
    full_count: int = 0  # full calls of this slot in the run

    def observe(self, change: float) -> None:
        """Account for the probe's measured change of this call (before its decision)."""
        self.changes.append(change)
        self.drift += change

    def record(self, full: bool) -> None:
        """Account for a finished call."""
        if full:
            self.drift, self.cached_run = 0.0, 0
            self.full_count += 1
        else:
            self.cached_run += 1


class Policy(Protocol):
    """Decides full or cached per call; ``probes``: it reads the shallow feature's change."""

    probes: bool

    def start(self, num_steps: int | None) -> None:
        """A new run of ``num_steps`` steps (``None``: unknown) begins."""

    def decide(self, step: int, history: History | None) -> bool | None:
        """Full (True), cached (False), or undecided until the probe (None)."""

    def resolve(self, step: int, history: History) -> bool:
        """The decision of an undecided call, once the probe's change is in ``history``."""


class Static:
    """A rule of steps fixed per run: ``rule_for(num_steps)`` gives ``step -> full``, built at the
    run's first call (so a missing run length is reported then, with the policy's own message)."""

    probes = False

    def __init__(self, rule_for: Callable[[int | None], Rule]):
        self.rule_for = rule_for
        self.start(None)

    def start(self, num_steps: int | None) -> None:
        self.num_steps, self._rule = num_steps, None

    def rule(self) -> Rule:
        if self._rule is None:
            self._rule = self.rule_for(self.num_steps)
        return self._rule

    def decide(self, step: int, history: History | None) -> bool:
        return self.rule()(step)

    def resolve(self, step: int, history: History) -> bool:
        raise AssertionError("a static policy decides every call in advance")


class Adaptive:
    """A full call when the shallow feature has drifted enough since the last one.

    The refinements' forced steps (step 0, warm-up, cool-down, window edges) are always full and
    ``max_cached`` caps a cached run; every other call waits for the probe. The drift is the sum of
    the relative changes since the last full call; it triggers a full call at a fixed ``threshold``,
    or, without one, at the paced budget rule of ``threshold_for``.
    """

    probes = True

    def __init__(self, config: DeepCacheConfig):
        self.config = config
        self.forced = Static(self._forced_rule)  # the steps that are full whatever the drift
        self.start(None)

    def _forced_rule(self, num_steps: int | None) -> Rule:
        config = self.config
        return frozenset(config.forced_full_steps(num_steps) if config.refined else (0,)).__contains__

    def start(self, num_steps: int | None) -> None:
        self.num_steps = num_steps
        self.forced.start(num_steps)

    def decide(self, step: int, history: History | None) -> bool | None:
        if self.forced.decide(step, history):
            return True
        cap = self.config.max_cached
        if history is not None and cap is not None and history.cached_run >= cap:
            return True
        return None

    def resolve(self, step: int, history: History) -> bool:
        return history.drift >= self.threshold_for(step, history)

    def threshold_for(self, step: int, history: History) -> float:
        """The drift that triggers a full call.

        A fixed ``threshold`` if configured. Otherwise a budget of ceil(T / N) full steps, paced: the
        remaining budget is spread over the remaining steps, so a full step comes when the drift
        reaches the mean single-step change times the steps left per full step left. Drift above the
        average spends the budget early, below it saves it for later. Full steps that the
        refinements force later in the run are reserved from the budget. Without a known run length
        T: N times the mean single-step change.
        """
        config, n = self.config, self.num_steps
        if config.threshold is not None:
            return config.threshold
        mean = statistics.fmean(history.changes or [0.0])
        if n is None:
            return config.interval * mean
        forced_ahead = sum(self.forced.decide(s, history) for s in range(step + 1, n))
        budget_left = config.budget(n) - history.full_count - forced_ahead
        return mean * (n - step) / budget_left if budget_left > 0 else math.inf


def policy_for(config: DeepCacheConfig, branch: int | None = None) -> Static | Adaptive:
    """The policy of a DeepCache configuration (interval 1: every call full, adaptive or not); with
    ``config.phases``, of the group cut at ``branch``: full on full steps, and on cached steps that cut
    deeper than it (a larger branch id) it runs its modules, ``FULL`` (keeping its feature afresh) or,
    with ``refresh=False``, ``RUN`` (keeping the last full step's).

    Example:
        >>> config = DeepCacheConfig(interval=2, branch=0, phases=((0.5, 2),))
        >>> shallow, deep = policy_for(config, 0), policy_for(config, 2)
        >>> shallow.start(8); deep.start(8)
        >>> "".join("FC"[not shallow.decide(s, None)] + "FC"[not deep.decide(s, None)] for s in range(8))
        'FFCCFFCCFFFCFFFC'
        >>> kept = policy_for(DeepCacheConfig(interval=2, branch=0, phases=((0.5, 2),), refresh=False), 0)
        >>> kept.start(8); [kept.decide(s, None) for s in range(4, 8)]
        [True, 'run', True, 'run']
    """
    if config.adaptive:
        return Adaptive(config)
    if not config.phases:
        return Static(config.full_step_rule)
    deeper = FULL if config.refresh is not False else RUN

    def rule_for(num_steps: int | None) -> Rule:
        full, cut = config.full_step_rule(num_steps), config.cut_rule(num_steps)
        return lambda step: FULL if full(step) else deeper if cut(step) > branch else CACHED

    return Static(rule_for)


def relative_change(x: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """mean |x - previous| / mean |previous|, a 0-d float32 tensor on their device (no host
    synchronisation): how much a feature changed in one step.

    Example:
        >>> relative_change(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0]))
        tensor(1.)
    """
    x, previous = x.float(), previous.float()
    return (x - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12)
