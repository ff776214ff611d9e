"""Layer 1: schedules and configuration, pure logic without models."""

import math

import pytest

from cachediff import schedule
from cachediff.config import DeepCacheConfig


@pytest.mark.parametrize("steps,interval", [(50, 1), (50, 3), (50, 5), (7, 7), (7, 10), (100, 2)])
def test_uniform_has_ceil_t_over_n_full_steps_starting_at_zero(steps, interval):
    full = schedule.uniform(steps, interval)
    assert full[0] == 0
    assert len(full) == math.ceil(steps / interval) == schedule.num_full_steps(steps, interval)
    assert all(b - a == interval for a, b in zip(full, full[1:], strict=False))


def test_quadratic_center_matches_the_official_code_examples():
    # ../shared/ANCHORS.md: outputs of the official sample_from_quad_center
    assert schedule.quadratic_center(50, 10, 15, 1.4) == (0, 5, 9, 13, 17, 21, 26, 31, 37, 43)
    assert schedule.quadratic_center(50, 17, 15, 1.3) == (
        0, 3, 6, 8, 11, 13, 15, 17, 20, 23, 26, 29, 32, 35, 39, 42, 46,
    )  # fmt: skip


def test_quadratic_center_symmetric_reading():
    assert schedule.quadratic_center(50, 10, 15, 1.4, symmetric=True) == (
        0,
        5,
        10,
        13,
        15,
        19,
        24,
        29,
        35,
        42,
    )


def _official_quad_center(total, n, center, pow):  # the official function, verbatim in behaviour
    import warnings

    import numpy as np

    warnings.simplefilter("ignore")
    while pow > 1:
        x = np.linspace((-center) ** (1 / pow), (total - center) ** (1 / pow), n + 1)
        idx = [0] + [v + center for v in np.unique(np.int32(x**pow))[1:-1]]
        if len(idx) == n:
            return tuple(int(v) for v in idx)
        pow -= 0.02
    return None


@pytest.mark.parametrize("total", [25, 50, 100, 250])
@pytest.mark.parametrize("interval", [3, 5, 10])
@pytest.mark.parametrize("center,power", [(5, 1.2), (15, 1.4), (10, 1.6)])
def test_quadratic_center_equals_official_function(total, interval, center, power):
    n = math.ceil(total / interval)
    expected = _official_quad_center(total, n, center, power)
    if expected is None:
        with pytest.raises(ValueError):
            schedule.quadratic_center(total, n, center, power)
    else:
        assert schedule.quadratic_center(total, n, center, power) == expected


@pytest.mark.parametrize("total,n", [(50, 10), (250, 25), (100, 10)])
def test_quadratic_start_is_increasing_distinct_and_dense_early(total, n):
    full = schedule.quadratic_start(total, n, 1.2)
    assert len(full) == n and full[0] == 0 and list(full) == sorted(set(full))
    gaps = [b - a for a, b in zip(full, full[1:], strict=False)]
    assert gaps[0] <= gaps[-1]


def test_explicit_adds_step_zero_sorts_and_trims():
    assert schedule.explicit([9, 3, 3]) == (0, 3, 9)
    assert schedule.explicit([9, 3], num_steps=5) == (0, 3)
    with pytest.raises(ValueError, match=">= 0"):
        schedule.explicit([-1])


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3"])
def test_uniform_rejects_bad_interval(bad):
    with pytest.raises(ValueError, match="positive integer"):
        schedule.uniform(10, bad)


def test_quadratic_center_rejects_bad_arguments():
    with pytest.raises(ValueError, match="center"):
        schedule.quadratic_center(50, 10, center=50)
    with pytest.raises(ValueError, match="power"):
        schedule.quadratic_center(50, 10, power=1.0)


def test_config_rules():
    assert [s for s in range(10) if DeepCacheConfig(interval=4).full_step_rule()(s)] == [0, 4, 8]
    rule = DeepCacheConfig(interval=5, schedule="non-uniform", center=15, power=1.4).full_step_rule(50)
    assert tuple(s for s in range(50) if rule(s)) == schedule.quadratic_center(50, 10, 15, 1.4)
    rule = DeepCacheConfig(schedule="explicit", full_steps=(4, 2)).full_step_rule()
    assert [s for s in range(6) if rule(s)] == [0, 2, 4]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(interval=0), "interval must be an integer >= 1"),
        (dict(interval=2.5), "interval must be an integer >= 1"),
        (dict(branch=-1), "branch must be an integer >= 0"),
        (dict(schedule="quadratic"), "schedule must be one of uniform, non-uniform, explicit"),
        (dict(schedule="non-uniform", power=0.9), "power must be > 1"),
        (dict(schedule="explicit"), "needs full_steps"),
        (dict(full_steps=(0, 3)), "only used with schedule='explicit'"),
        (dict(phases=((0.5,),)), r"phases must be \(\(start, branch\), ...\)"),
        (dict(phases=((0.5, -1),)), "starts and branches >= 0"),
        (dict(phases=()), "starts and branches >= 0"),
        (dict(phases=((0.5, 2),), schedule="adaptive"), "phases take a static schedule"),
        (dict(phases=((0.5, 2),), reuse="forecast", time="shallow"), "an act without the probe"),
        (dict(phases=((0.5, 2),), reuse="forecast", fallback=True), "without fallback"),
    ],
)
def test_config_errors_say_what_is_valid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeepCacheConfig(**kwargs)


def test_cuts_by_phase():
    config = DeepCacheConfig(branch=1, phases=((0.4, 3), (8, 0)))
    assert config.branches == (3, 1, 0)
    assert [config.cut_rule(10)(s) for s in range(10)] == [1] * 4 + [3] * 4 + [0] * 2
    assert [DeepCacheConfig(branch=1, phases=((2, 3),)).cut_rule()(s) for s in range(4)] == [1, 1, 3, 3]
    with pytest.raises(ValueError, match="start at a fraction of the run need the number of steps"):
        config.cut_rule(None)


def test_non_uniform_needs_the_run_length():
    with pytest.raises(ValueError, match="number of steps"):
        DeepCacheConfig(schedule="non-uniform").full_step_rule(None)


def test_config_is_frozen():
    cfg = DeepCacheConfig()
    with pytest.raises(AttributeError):
        cfg.interval = 5
    assert cfg.replace(interval=5).interval == 5


# ----------------------------------------------------------------------------- refinements
@pytest.mark.parametrize("base_interval", [2, 5, 50])
@pytest.mark.parametrize(
    "refine",
    [
        dict(warmup=3),
        dict(cooldown=4),
        dict(window=(0.2, 0.8)),
        dict(window=(10, 30)),
        dict(max_cached=2),
        dict(warmup=2, cooldown=2, window=(5, 0.9), max_cached=3),
    ],
)
def test_refinements_only_add_full_steps_and_honour_their_rule(base_interval, refine):
    base = schedule.uniform(40, base_interval)
    full = schedule.compose(40, base, **refine)
    assert set(base) <= set(full) and full == tuple(sorted(set(full)))
    cached = [s for s in range(40) if s not in full]
    assert all(s >= refine.get("warmup", 0) for s in cached)
    assert all(s < 40 - refine.get("cooldown", 0) for s in cached)
    if "window" in refine:
        start, end = schedule.resolve_window(refine["window"], 40)
        assert all(start <= s < end for s in cached)
    if "max_cached" in refine:
        runs = [b - a - 1 for a, b in zip(full, full[1:] + (40,), strict=False)]
        assert max(runs) <= refine["max_cached"]


def test_refinements_compose_in_any_order():
    a = schedule.compose(30, schedule.compose(30, (0, 10, 20), warmup=4), max_cached=3)
    b = schedule.compose(30, (0, 10, 20), warmup=4, max_cached=3)
    assert a == b


def test_mask_schedule():
    assert schedule.from_mask("fccF") == (0, 3)
    assert DeepCacheConfig(schedule="explicit", full_steps="FCCFC").full_steps == (0, 3)
    with pytest.raises(ValueError, match="only 'F'"):
        schedule.from_mask("FXC")


def test_window_errors():
    with pytest.raises(ValueError, match="0 <= start <= end"):
        schedule.resolve_window((0.8, 0.2), 10)
    with pytest.raises(ValueError, match="window must be"):
        DeepCacheConfig(window=(1, 2, 3))


def test_refined_config_rules():
    cfg = DeepCacheConfig(interval=4, schedule="non-uniform", center=5, warmup=3)
    rule = cfg.full_step_rule(20)
    assert [s for s in range(20) if rule(s)] == list(cfg.full_steps_for(20))
    assert {0, 1, 2} <= set(cfg.full_steps_for(20))
    with pytest.raises(ValueError, match="with refinements needs the number of steps"):
        DeepCacheConfig(interval=4, cooldown=2).full_step_rule(None)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(warmup=-1), "warmup must be an integer >= 0"),
        (dict(cooldown=1.5), "cooldown must be an integer >= 0"),
        (dict(max_cached=-2), "max_cached must be"),
        (dict(threshold=0.1), "only used with schedule='adaptive'"),
        (dict(schedule="adaptive", threshold=0), "threshold must be > 0"),
    ],
)
def test_refinement_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeepCacheConfig(**kwargs)


def test_adaptive_has_no_static_schedule():
    with pytest.raises(ValueError, match="decides at run time"):
        DeepCacheConfig(schedule="adaptive").full_steps_for(10)
