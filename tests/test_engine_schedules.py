"""Layer 3: schedules inside a pipeline: non-uniform from the scheduler's run length, refinements, the
adaptive schedule's decisions re-derived from its measured changes, change tracking."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_baseline as baseline

import cachediff
from cachediff import DeepCacheConfig, DeepCacheEngine, schedule
from cachediff.testing import sample, tiny_unet

KINDS = ["sd", "sdxl", "svd", "ddpm"]


def test_non_uniform_schedule_uses_the_run_length_from_the_scheduler():
    pipe, cond, _ = baseline("sd")
    with cachediff.deepcache(
        pipe, interval=3, branch=0, schedule="non-uniform", center=4, power=1.2
    ) as engine:
        sample(pipe, cond, steps=20)
    expected = schedule.quadratic_center(20, 7, 4, 1.2)
    assert [c.step for c in engine.stats.calls if c.full] == list(expected)


def test_non_uniform_on_a_bare_unet_needs_reset_with_num_steps():
    unet, cond = tiny_unet("sd", batch=1)
    x = torch.randn(1, 4, 8, 8)
    engine = DeepCacheEngine(unet, DeepCacheConfig(interval=3, schedule="non-uniform", center=2, power=1.2))
    engine.enable()
    with pytest.raises(ValueError, match="number of steps"):
        unet(x, 500, **cond)
    engine.reset(num_steps=9)
    for t in range(9):
        unet(x, 900 - 100 * t, **cond)
    assert [c.step for c in engine.stats.calls if c.full] == list(schedule.quadratic_center(9, 3, 2, 1.2))
    engine.disable()


def test_refined_schedule_follows_the_pure_rule_in_a_pipeline():
    pipe, cond, _ = baseline("sd")
    config = DeepCacheConfig(interval=3, warmup=2, cooldown=2, max_cached=1)
    with cachediff.deepcache(pipe, **vars(config)) as engine:
        sample(pipe, cond, steps=12)
    assert [c.step for c in engine.stats.calls if c.full] == list(config.full_steps_for(12))


def test_adaptive_with_a_tiny_threshold_is_the_baseline():
    pipe, cond, base = baseline("sd")
    with cachediff.deepcache(pipe, schedule="adaptive", threshold=1e-9) as engine:
        out = sample(pipe, cond)
    assert engine.stats.pattern == "F" * 10 and torch.equal(out, base)


@pytest.mark.parametrize("kind", ["sd", "ddpm"])
def test_adaptive_at_interval_1_is_the_baseline(kind):
    """Interval 1 means no caching: the budget is every step, so every call is full, bit-exact
    (issue 31: the paced rule cached any step whose change was below the running mean)."""
    pipe, cond, base = baseline(kind)
    with cachediff.deepcache(pipe, interval=1, branch=1, schedule="adaptive") as engine:
        out = sample(pipe, cond)
    assert engine.stats.pattern == "F" * 10 and torch.equal(out, base)
    with pytest.raises(ValueError, match="interval 1 means no caching"):
        DeepCacheConfig(interval=1, schedule="adaptive", threshold=0.1)


def test_adaptive_with_a_huge_threshold_caches_up_to_the_cap():
    pipe, cond, _ = baseline("sd")
    with cachediff.deepcache(pipe, schedule="adaptive", threshold=1e9, max_cached=3, cooldown=1) as engine:
        sample(pipe, cond)
    assert engine.stats.pattern == "FCCCFCCCFF"  # cap of 3, last step full


def replay(changes, interval, forced=frozenset({0})):
    """The paced adaptive rule re-derived from the recorded changes, independently of the engine:
    a budget of ceil(T / N) full steps, of which the ``forced`` steps still ahead are reserved."""
    steps, budget = len(changes), -(-len(changes) // interval)
    pattern, drift, seen, n_full = "", 0.0, [], 0
    for step, change in enumerate(changes):
        if change is not None:
            seen.append(change)
        if step in forced:
            full = True
        else:
            drift += change
            left = budget - n_full - sum(f > step for f in forced)
            full = left > 0 and drift >= sum(seen) / len(seen) * (steps - step) / left
        pattern += "F" if full else "C"
        drift, n_full = (0.0, n_full + 1) if full else (drift, n_full)
    return pattern


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("interval", [2, 4])
def test_adaptive_budget_decisions_follow_the_measured_change(kind, interval):
    pipe, cond, _ = baseline(kind)
    with cachediff.deepcache(pipe, interval=interval, branch=1, schedule="adaptive") as engine:
        sample(pipe, cond, steps=16)
    stats = engine.stats
    assert stats.changes[0] is None and all(c > 0 for c in stats.changes[1:])
    assert stats.pattern == replay(stats.changes, interval)
    assert 1 < stats.n_full <= -(-16 // interval)  # it refreshes, within the budget


@pytest.mark.parametrize("warmup,cooldown", [(2, 3), (0, 4)])
def test_adaptive_budget_reserves_the_full_steps_that_refinements_force(warmup, cooldown):
    pipe, cond, _ = baseline("sd")
    options = dict(schedule="adaptive", warmup=warmup, cooldown=cooldown)
    with cachediff.deepcache(pipe, interval=4, branch=1, **options) as engine:
        sample(pipe, cond, steps=16)
    forced = {0, *range(warmup), *range(16 - cooldown, 16)}
    assert engine.stats.pattern == replay(engine.stats.changes, 4, forced)
    assert engine.stats.n_full <= 16 // 4 + len(forced)


def test_track_change_records_changes_for_static_schedules_without_changing_the_output():
    pipe, cond, _ = baseline("sd")
    with cachediff.deepcache(pipe, interval=3) as plain:
        a = sample(pipe, cond)
    with cachediff.deepcache(pipe, interval=3, track_change=True) as tracked:
        b = sample(pipe, cond)
    assert torch.equal(a, b) and plain.stats.pattern == tracked.stats.pattern
    assert all(c is None for c in plain.stats.changes) and tracked.stats.changes[1] > 0
    assert "10 calls: 4 full, 6 cached" in tracked.stats.summary(2.0, 1.0)
