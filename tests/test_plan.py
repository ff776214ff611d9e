"""The planner (issue 26): candidates pruned by MACs, fidelity on calibration seeds only, the front
timed, a planted best candidate found, bad budgets refused; ``main.py --plan`` end to end."""

from __future__ import annotations

import json

import pytest
from diffusers import DDIMPipeline, DDIMScheduler

import main
from cachediff import plan
from cachediff.plan import CALIBRATION_SEED, Planner, Space
from cachediff.sweep import Setting, Sweep
from cachediff.testing import tiny_unet

SPACE = Space(intervals=(2, 3), branches=(0, 1), schedules=("uniform",), acts=("replay", "forecast2"))


@pytest.fixture
def planner(tmp_path):
    unet, _ = tiny_unet("ddpm")
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(clip_sample=False))
    return Planner(pipe, tmp_path, 6, "unconditional", calibration=2, converged_steps=12, space=SPACE,
                   timing_images=1, repeats=1)  # fmt: skip


def test_mac_speedups_and_pruning_by_hand():
    macs = {0: (10.0, 2.0), 1: (10.0, 5.0)}
    adaptive = Setting("a", 12, plan.DeepCacheConfig(interval=3, branch=1, schedule="adaptive"))
    assert plan.mac_speedup(adaptive, macs, 12) == pytest.approx(10 / ((4 * 10 + 8 * 5) / 12))  # its budget
    assert plan.mac_speedup(Setting("s", 4), macs, 12) == 3.0
    kept = plan.prune(plan.candidates(12, SPACE), macs, 12, budget=2.0)
    assert [(s.name, round(b, 3)) for s, b in kept] == [
        ("steps-6", 2.0), ("N3-b0-uniform-replay", 2.143), ("N3-b0-uniform-forecast2", 2.143)
    ]  # fmt: skip  # branch 1 reaches 2x at no interval of the space


def test_the_planner_finds_a_planted_best_candidate_on_calibration_seeds_only(planner, monkeypatch):
    seeds = []
    generate = Sweep.generate
    monkeypatch.setattr(
        Sweep, "generate", lambda self, s, chunk: seeds.extend(chunk) or generate(self, s, chunk)
    )
    kept = plan.prune(plan.candidates(6, SPACE), planner.macs(), 6, 1.2)
    planted = kept[-1][0].name  # the last kept: not the fastest, not fewer steps
    scored = planner.fidelity

    def with_planted(setting):
        scores = dict(scored(setting))
        if setting.name == planted:
            scores[plan.RANK] += 50.0
        return scores

    monkeypatch.setattr(planner, "fidelity", with_planted)
    result = planner.plan(1.2)
    assert result.pick == planted and planted in result.front
    assert {r["candidate"] for r in result.rows} == {s.name for s, _ in kept}
    assert all(("measured_speedup" in r) == r["front"] for r in result.rows)  # only the front is timed
    assert seeds and min(seeds) >= CALIBRATION_SEED  # never an evaluation seed (0, 1, ...)
    assert planted in result.table() and f"**{planted}**" in result.table()


def test_bad_budgets_are_refused(planner):
    for bad in (1.0, 0.5, float("nan")):
        with pytest.raises(ValueError, match="a budget is a speedup > 1"):
            planner.plan(bad)
    with pytest.raises(ValueError, match=r"no candidate reaches 1000x; the fastest is steps-1 at 6.00x"):
        planner.plan(1000)


def test_main_plans_on_the_shipped_tiny_sd(tmp_path, capsys):
    args = ["--steps", "6", "--plan", "1.5", "2", "--calibration_images", "2", "--converged_steps", "12"]
    assert (
        main.main([*args, "--repeats", "1", "--timestep_spacing", "trailing", "--output", str(tmp_path)]) == 0
    )
    record = json.loads((tmp_path / "plan.json").read_text())
    assert [p["budget"] for p in record["plans"]] == [1.5, 2.0] and record["spacing"] == "trailing"
    assert record["calibration_seeds"] == [CALIBRATION_SEED, CALIBRATION_SEED + 1]
    for p in record["plans"]:
        assert p["pick"] in p["front"]
    assert (tmp_path / "plan.png").stat().st_size > 0 and (tmp_path / "plan.csv").exists()
    assert "budget 2x by macs: pick **" in capsys.readouterr().out


def test_main_refuses_a_budget_that_is_no_speedup(capsys):
    with pytest.raises(SystemExit):
        main.main(["--plan", "0.8"])
    assert "--plan takes speedups > 1" in capsys.readouterr().err
