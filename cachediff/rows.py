"""A sweep's settings and the one schema of its rows: a setting (step count and DeepCache configuration),
its parameters as columns (``params``; ``setting_of`` reads them back), and when a row must be scored
again (``rescore_reason``). ``cachediff.sweep`` stores a setting's samples; ``cachediff.scoring`` fills
its row.

Example:
    >>> s = Setting("N5-b2", cache=DeepCacheConfig(interval=5, branch=2))
    >>> s.n_full(), Setting("ddim-50", steps=50).n_full()
    (20, 50)
    >>> p = params(Setting("N5-b2-cap", cache=DeepCacheConfig(5, 2, schedule="adaptive", max_cached=7)))
    >>> p["method"], p["paper_branch"], p["max_cached"]
    ('adaptive + refinements', 3, 7)
    >>> setting_of(dict(setting="N5-b2-cap", **p)).cache.max_cached
    7
    >>> p = params(Setting("N3-b0-late2", cache=DeepCacheConfig(3, 0, phases=((0.5, 2),))))
    >>> p["method"], p["phases"], setting_of(dict(setting="N3-b0-late2", **p)).cache.phases
    ('uniform + phases', '[(0.5, 2)]', ((0.5, 2),))
    >>> kept = DeepCacheConfig(3, 0, phases=((0.5, 2),), refresh=False)
    >>> p = params(Setting("N3-b0-late2-kept", cache=kept))
    >>> p["refresh"], setting_of(dict(setting="N3-b0-late2-kept", **p)).cache.refresh
    (False, False)
"""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .config import DeepCacheConfig


@dataclass(frozen=True)
class Setting:
    """One point of a sweep: a step count and a DeepCache configuration (``None``: plain sampling)."""

    name: str
    steps: int = 100
    cache: DeepCacheConfig | None = None

    def n_full(self) -> int:
        """Full steps of a run (static schedules; the adaptive one is recorded per shard instead)."""
        return self.pattern().count("F")

    def pattern(self) -> str:
        """The run's full (F) and cached (C) steps in order (static schedules)."""
        full = set(range(self.steps) if self.cache is None else self.cache.full_steps_for(self.steps))
        return "".join("F" if s in full else "C" for s in range(self.steps))


#: Configuration fields that are columns of a row (with ``steps``); ``None`` where they do not apply.
CONFIG_COLUMNS = ("interval", "branch", "schedule", "reuse", "order", "time", "center", "power", "symmetric")
CONFIG_COLUMNS += ("full_steps",)
CONFIG_COLUMNS += ("warmup", "cooldown", "max_cached", "window", "threshold", "phases", "refresh")
#: The columns of a row, in order: the key, the parameters, the cost, the quality.
#: Quality columns with an interval have ``_lo`` and ``_hi`` beside them (``metrics.Interval``).
COLUMNS = (
    "setting", "method", "sampler", "spacing", "stepping", "steps", "interval", "branch", "paper_branch",
    *CONFIG_COLUMNS[2:], "samples", "n_full", "gmacs_per_image", "mac_speedup", "measured_speedup",
    "seconds_per_image", "fidelity_images", "psnr_db", "psnr_db_lo", "psnr_db_hi", "psnr_mean_db",
    "psnr_mean_db_lo", "psnr_mean_db_hi", "inception_distance", "inception_distance_lo",
    "inception_distance_hi", "converged", "psnr_conv_db", "psnr_conv_db_lo", "psnr_conv_db_hi",
    "psnr_conv_mean_db", "psnr_conv_mean_db_lo", "psnr_conv_mean_db_hi", "fid", "fid_lo", "fid_hi",
    "clip_score", "class_score", "class_score_lo", "class_score_hi", "class_accuracy",
)  # fmt: skip
_SEQUENCES = ("full_steps", "window", "phases")  # tuple fields, written as "[0, 4, 9]"


def method(config: DeepCacheConfig | None) -> str:
    """The curve a setting belongs to: "uncached", "cached feature -> zeros", or its schedule (with
    " + refinements" where a window, warm-up, cool-down or cap refines it, " + phases" where the cut
    changes by phase, and " + forecast k" where an order-k forecast replaces the replay)."""
    if config is None or config.interval == 1 and config.schedule != "explicit":
        return "uncached"
    if config.reuse == "zeros":
        return "cached feature -> zeros"
    name = config.schedule + (" + refinements" if config.refined else "")
    name += " + phases" if config.phases else ""
    return name + (f" + forecast {config.order}" if config.reuse == "forecast" else "")


def params(setting: Setting) -> dict:
    """The parameter columns of a setting (an uncached one reads as interval 1)."""
    config = setting.cache or DeepCacheConfig(interval=1)
    fields = {k: getattr(config, k) for k in CONFIG_COLUMNS}
    if config.schedule != "non-uniform":
        fields.update(center=None, power=None, symmetric=None)
    fields.update({k: None if fields[k] is None else str(list(fields[k])) for k in _SEQUENCES})
    return dict(method=method(setting.cache), steps=setting.steps, paper_branch=config.branch + 1, **fields)


def setting_of(row: dict) -> Setting:
    """The setting that a row's parameter columns describe (the inverse of ``params``)."""
    given = {k: row[k] for k in CONFIG_COLUMNS if not is_missing(row.get(k))}
    given.update({k: tuple(ast.literal_eval(given[k])) for k in _SEQUENCES if k in given})
    given.update({k: bool(given[k]) for k in ("symmetric", "refresh") if k in given})
    ints = ("interval", "branch", "order", "center", "warmup", "cooldown", "max_cached")
    given.update({k: int(given[k]) for k in ints if k in given})
    uncached = int(row["interval"]) == 1 and given.get("schedule") != "explicit"
    return Setting(row["setting"], int(row["steps"]), None if uncached else DeepCacheConfig(**given))


def is_missing(value) -> bool:
    """A CSV cell that holds nothing (``None`` or NaN)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def rescore_reason(row: dict | None, samples: int, columns: Sequence[str]) -> str | None:
    """Why a setting's row must be scored (again) by a run of ``samples`` images per setting that
    fills ``columns``: there is no row, it counts fewer samples, or it lacks one of the columns;
    ``None`` when it holds. A row of more samples is refused (rescoring would replace it with a
    noisier one).

    Example:
        >>> rescore_reason(dict(setting="N5", samples=2000, fid=9.1), 2000, ["fid"]) is None
        True
        >>> rescore_reason(dict(setting="N5", samples=2000, fid=9.1), 5000, ["fid"])
        'it holds 2000 samples, not 5000'
        >>> rescore_reason(dict(setting="N5", samples=2000), 2000, ["fid", "clip_score"])
        'it has no fid, clip_score'
    """
    if row is None:
        return "it has no row"
    if int(row["samples"]) > samples:
        raise ValueError(
            f"the row of {row['setting']} holds {int(row['samples'])} samples and this run asks for "
            f"{samples}: give --samples {int(row['samples'])}, or another --results"
        )
    if int(row["samples"]) < samples:
        return f"it holds {int(row['samples'])} samples, not {samples}"
    lacking = [c for c in columns if is_missing(row.get(c))]
    return f"it has no {', '.join(lacking)}" if lacking else None
