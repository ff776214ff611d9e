"""Layer 1: no host synchronisation in the engine's hot path. On the ``meta`` device every
synchronisation raises (``.item()``, ``float()``, ``bool()``, ``.cpu()``), so a run there proves that
a schedule needs none; the adaptive schedule reads one number per call on the host (``core.to_host``)."""

from __future__ import annotations

import pytest
import torch

from cachediff import DeepCacheConfig, DeepCacheEngine, core
from cachediff.testing import tiny_unet

STEPS = 10
STATIC = {
    "uniform": DeepCacheConfig(interval=3, branch=1),
    "non-uniform": DeepCacheConfig(interval=3, branch=1, schedule="non-uniform", center=4, power=1.2),
    "explicit": DeepCacheConfig(interval=3, branch=0, schedule="explicit", full_steps=(0, 4, 5, 9)),
    "window": DeepCacheConfig(interval=2, branch=1, window=(2, 8)),
    "refinements": DeepCacheConfig(interval=4, branch=2, warmup=1, cooldown=2, max_cached=2),
    "zeros": DeepCacheConfig(interval=3, branch=1, reuse="zeros"),
    "forecast": DeepCacheConfig(interval=3, branch=1, reuse="forecast", order=3),
    "forecast-fallback": DeepCacheConfig(interval=3, branch=1, reuse="forecast", order=2, fallback=True),
    "forecast-in-steps": DeepCacheConfig(interval=3, branch=1, reuse="forecast", order=2, time="step"),
    "forecast-shallow": DeepCacheConfig(interval=3, branch=1, reuse="forecast", order=3, time="shallow"),
    "forecast-anchored": DeepCacheConfig(interval=3, branch=1, reuse="forecast", order=3, time="anchored"),
    "phases": DeepCacheConfig(interval=3, branch=0, phases=((0.5, 2),), reuse="forecast", order=2),
    "phases-kept": DeepCacheConfig(interval=3, branch=2, phases=((0.5, 0),), reuse="forecast", refresh=False),
}


def run_on_meta(config: DeepCacheConfig, kind: str = "sd", track_change: bool = False) -> DeepCacheEngine:
    with torch.device("meta"):
        unet, cond = tiny_unet(kind)
        x = torch.randn(2, unet.config.in_channels, 8, 8)
    engine = DeepCacheEngine(unet, config, track_change=track_change)
    with engine:
        engine.reset(STEPS)
        for t in range(STEPS):
            out = unet(x, 999 - 100 * t, **cond).sample
    assert out.device.type == "meta" and out.shape == x.shape
    return engine


@pytest.mark.parametrize("name", list(STATIC))
def test_static_schedules_run_without_a_host_sync(name):
    config = STATIC[name]
    engine = run_on_meta(config)
    assert engine.stats.n_full == len(config.full_steps_for(STEPS)) < STEPS


@pytest.mark.parametrize("kind", ["sdxl", "ddpm"])
def test_other_layouts_run_without_a_host_sync(kind):
    assert run_on_meta(STATIC["uniform"], kind).stats.pattern == "FCCFCCFCCF"


def test_tracked_changes_stay_on_the_device_until_read():
    engine = run_on_meta(STATIC["uniform"], track_change=True)
    recorded = [c.change_value for c in engine.stats.calls]
    assert recorded[0] is None and all(v.device.type == "meta" for v in recorded[1:])


def test_the_adaptive_schedule_syncs_once_per_call_in_to_host(monkeypatch):
    config = DeepCacheConfig(interval=3, branch=1, schedule="adaptive")
    with pytest.raises((RuntimeError, NotImplementedError), match="meta"):
        run_on_meta(config)  # the decision needs the change on the host
    reads = []
    monkeypatch.setattr(core, "to_host", lambda value: reads.append(value.device.type) or 0.1)
    engine = run_on_meta(config)
    assert reads == ["meta"] * (STEPS - 1)  # every call but the first, which has nothing to compare
    assert engine.stats.n_full == config.budget(STEPS)
