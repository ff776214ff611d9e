"""Layer 1: sweep suites as data, and the one row schema whose columns carry every parameter."""

from __future__ import annotations

import pytest

from cachediff import DeepCacheConfig, suites
from cachediff.rows import COLUMNS, Setting, params, setting_of

PLANS = [suites.Plan(), suites.Plan(steps=20, branch=0, intervals=(2, 3), budgets=(2, 3))]


@pytest.mark.parametrize("plan", PLANS)
def test_every_setting_of_every_suite_reads_back_from_its_columns(plan):
    settings = suites.build(list(suites.SUITES), plan, full_macs=10.0, cached_macs=4.0, branches=6)
    assert len({s.name for s in settings}) == len(settings)
    for s in settings:
        row = dict(setting=s.name, **params(s))
        assert set(row) <= set(COLUMNS)
        back = setting_of(row)
        assert back.steps == s.steps and back.cache == s.cache, s.name


def test_refinements_are_columns_not_names():
    capped = Setting("x", 100, DeepCacheConfig(5, 2, schedule="adaptive", max_cached=7, window=(0.1, 0.9)))
    row = params(capped)
    assert (row["max_cached"], row["window"], row["method"]) == (7, "[0.1, 0.9]", "adaptive + refinements")
    assert setting_of(dict(setting="x", **row)).cache == capped.cache
    assert params(Setting("ddim-50", 50))["method"] == "uncached"
    explicit = Setting("e", 10, DeepCacheConfig(3, 1, schedule="explicit", full_steps="FCCFFCCCCF"))
    assert params(explicit)["full_steps"] == "[0, 3, 4, 9]"
    assert setting_of(dict(setting="e", **params(explicit))).cache == explicit.cache


def test_fewer_steps_sit_at_the_macs_of_each_interval():
    plan = suites.Plan(intervals=(2, 5))
    # N = 2 over 100 steps: 50 full (10) + 50 cached (4) = 7 per step on average: 70 steps of 10
    assert plan.fewer_steps(full_macs=10.0, cached_macs=4.0) == [70, 52]


def test_unknown_suites_are_named():
    with pytest.raises(ValueError, match="unknown suites tables; known: interval"):
        suites.build(["tables"], suites.Plan(), 1.0, 1.0, 6)
