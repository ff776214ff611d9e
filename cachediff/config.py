"""The DeepCache configuration: a frozen, validated dataclass.

Example:
    >>> cfg = DeepCacheConfig(interval=3, branch=0)
    >>> [s for s in range(8) if cfg.full_step_rule(num_steps=8)(s)]
    [0, 3, 6]
    >>> DeepCacheConfig(interval=0)
    Traceback (most recent call last):
    ...
    ValueError: interval must be an integer >= 1 (1 = no caching), got 0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from . import schedule

#: Schedule names; "non-uniform" is the paper's quadratic schedule around a centre step (Section 3.3).
SCHEDULES = ("uniform", "non-uniform", "explicit")


@dataclass(frozen=True)
class DeepCacheConfig:
    """How to cache.

    Args:
        interval: cache interval N: one full step every N steps on average (1 = no caching).
        branch: skip branch id b (official ``cache_branch_id``; the paper's branch is b + 1).
            0 is the shallowest and fastest; valid ids depend on the U-Net (SD 1.x: 0..11).
        schedule: "uniform" (full steps 0, N, 2N, ...), "non-uniform" (the paper's quadratic schedule,
            ceil(T / N) full steps densest around ``center``), or "explicit" (``full_steps``).
        center: centre step of the non-uniform schedule.
        power: exponent of the non-uniform schedule (> 1).
        symmetric: non-uniform only: use the mirror-symmetric reading instead of the official code's.
        full_steps: the full steps of the "explicit" schedule (step 0 is always full).
        reuse: what a cached step feeds the shallow branch: "cache" (DeepCache) or "zeros" (the
            paper's Table 5 ablation, which shows that the cached feature matters).
    """

    interval: int = 3
    branch: int = 0
    schedule: str = "uniform"
    center: int = 15
    power: float = 1.4
    symmetric: bool = False
    full_steps: tuple[int, ...] | None = None
    reuse: str = "cache"

    def __post_init__(self) -> None:
        if not _is_int(self.interval) or self.interval < 1:
            raise ValueError(f"interval must be an integer >= 1 (1 = no caching), got {self.interval!r}")
        if not _is_int(self.branch) or self.branch < 0:
            raise ValueError(f"branch must be an integer >= 0 (0 = shallowest skip), got {self.branch!r}")
        if self.reuse not in ("cache", "zeros"):
            raise ValueError(f"reuse must be 'cache' or 'zeros', got {self.reuse!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        if self.schedule == "non-uniform":
            if not _is_int(self.center) or self.center < 0:
                raise ValueError(f"center must be an integer >= 0, got {self.center!r}")
            if not self.power > 1:
                raise ValueError(f"power must be > 1, got {self.power!r}")
        if self.schedule == "explicit":
            if self.full_steps is None:
                raise ValueError("schedule 'explicit' needs full_steps, e.g. full_steps=(0, 4, 9)")
            object.__setattr__(self, "full_steps", schedule.explicit(self.full_steps))
        elif self.full_steps is not None:
            raise ValueError(f"full_steps is only used with schedule='explicit', not {self.schedule!r}")

    def replace(self, **changes) -> DeepCacheConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def full_step_rule(self, num_steps: int | None = None) -> Callable[[int], bool]:
        """A predicate ``step -> is a full step`` for a run of ``num_steps`` steps.

        The uniform and explicit schedules need no run length; the non-uniform one does.
        """
        if self.schedule == "uniform" or self.interval == 1:
            interval = self.interval
            return lambda step: step % interval == 0
        if self.schedule == "explicit":
            return frozenset(self.full_steps).__contains__
        if num_steps is None:
            raise ValueError(
                "the non-uniform schedule needs the number of steps; use a pipeline (whose scheduler "
                "tells it) or call engine.reset(num_steps=...)"
            )
        n_full = math.ceil(num_steps / self.interval)
        steps = schedule.quadratic_center(
            num_steps, n_full, min(self.center, num_steps - 1), self.power, self.symmetric
        )
        return frozenset(steps).__contains__


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
