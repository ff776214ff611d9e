"""cachediff: training-free DeepCache acceleration for unmodified diffusers pipelines.

Two lines on any supported U-Net pipeline:

    >>> import cachediff  # doctest: +SKIP
    >>> with cachediff.deepcache(pipe, interval=3, branch=0):  # doctest: +SKIP
    ...     image = pipe("a photo of an astronaut").images[0]

or the official helper's API: ``from cachediff import DeepCacheSDHelper``. Transformer pipelines
(PixArt-alpha, DiT) and custom recipes use the module-level API:

    >>> rules = [cachediff.dit_rule(pipe.transformer, interval=2)]  # doctest: +SKIP
    >>> with cachediff.cache_modules(pipe, rules):  # doctest: +SKIP
    ...     image = pipe("a photo of an astronaut").images[0]
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from . import schedule
from .compiling import compile_denoiser, uncompile
from .config import SCHEDULES, DeepCacheConfig
from .core import Session
from .engine import DeepCacheEngine
from .helper import DeepCacheSDHelper
from .modules import CacheRule, ModuleCache, denoiser, dit_rule, every
from .sampling import k_diffusion_run, sampling_run
from .stats import Call, RunStats
from .unets import SPECS, BranchPlan, branch_plan, num_branches

__version__ = "0.1.0"
__all__ = [
    "SCHEDULES",
    "SPECS",
    "BranchPlan",
    "CacheRule",
    "Call",
    "DeepCacheConfig",
    "DeepCacheEngine",
    "DeepCacheSDHelper",
    "ModuleCache",
    "cache_modules",
    "compile_denoiser",
    "RunStats",
    "Session",
    "branch_plan",
    "deepcache",
    "denoiser",
    "dit_rule",
    "engine_for",
    "every",
    "k_diffusion_run",
    "num_branches",
    "sampling_run",
    "schedule",
    "uncompile",
]


def engine_for(target, config: DeepCacheConfig = DeepCacheConfig()) -> DeepCacheEngine:
    """A (disabled) engine for a pipeline with a ``.unet`` or for a bare U-Net module."""
    unet = getattr(target, "unet", None)
    if unet is not None:
        return DeepCacheEngine(unet, config, pipeline=target)
    if isinstance(target, torch.nn.Module):
        return DeepCacheEngine(target, config)
    raise TypeError(
        f"expected a diffusers pipeline with a .unet or a U-Net module, got {type(target).__name__}; "
        "transformer pipelines (DiT, PixArt) are served by the module-level API"
    )


@contextmanager
def deepcache(
    target, interval: int = 3, branch: int = 0, track_change: bool = False, **options
) -> Iterator[DeepCacheEngine]:
    """Run DeepCache inside a ``with`` block; leaving it (also by an exception) restores the model.

    Args:
        target: a diffusers pipeline with a ``.unet``, or a supported U-Net module.
        interval: cache interval N (1 = no caching).
        branch: skip branch id (official ``cache_branch_id``; paper branch = id + 1).
        track_change: record the shallow feature's per-step change in ``engine.stats``.
        **options: further ``DeepCacheConfig`` fields (``schedule``, ``window``, ``warmup``, ...).

    Yields:
        The enabled ``DeepCacheEngine`` (``.stats``, ``.cache_nbytes``, ``.describe()``).
    """
    engine = engine_for(target, DeepCacheConfig(interval=interval, branch=branch, **options))
    engine.track_change = track_change
    engine.enable()
    try:
        yield engine
    finally:
        engine.disable()


@contextmanager
def cache_modules(target, rules: list[CacheRule]) -> Iterator[ModuleCache]:
    """Module-level caching inside a ``with`` block on a pipeline (its scheduler counts steps) or module.

    Yields:
        The enabled ``ModuleCache`` (``.plan(n)``, ``.describe(n)``, ``.stats``, ``.reused``).
    """
    pipeline = None if isinstance(target, torch.nn.Module) else target
    cache = ModuleCache(denoiser(target), rules, pipeline=pipeline).enable()
    try:
        yield cache
    finally:
        cache.disable()
