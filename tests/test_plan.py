"""The planner (issue 26): candidates pruned by MACs, fidelity on calibration seeds only, the front
timed, a planted best candidate found, bad budgets refused; ``main.py --plan`` end to end."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from diffusers import DDIMPipeline, DDIMScheduler, PNDMScheduler

import main
from cachediff import plan
from cachediff.plan import CALIBRATION_SEED, Planner, Space
from cachediff.rows import Setting
from cachediff.sweep import Sweep
from cachediff.testing import tiny_unet

SPACE = Space(intervals=(2, 3), branches=(0, 1), schedules=("uniform",), acts=("replay", "forecast2"))


@pytest.fixture
def planner(tmp_path):
    unet, _ = tiny_unet("ddpm")
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(clip_sample=False))
    return Planner(pipe, tmp_path, 6, "unconditional", calibration=2, converged_steps=20, space=SPACE,
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


def test_mac_speedups_count_the_model_calls_the_sampler_makes():
    """PLMS calls the model 51 times in 50 steps and 13 in 12: 12 steps are 3.92x, not 4.17x, and the
    N = 5 schedule runs 11 full calls of 51, not 10 of 50."""
    calls = plan.model_calls(PNDMScheduler(skip_prk_steps=True))
    macs = {0: (10.0, 0.5)}
    assert plan.mac_speedup(Setting("s", 12), macs, 50, calls) == pytest.approx(51 / 13)
    n5 = Setting("n5", 50, plan.DeepCacheConfig(interval=5, branch=0))
    assert plan.mac_speedup(n5, macs, 50, calls) == pytest.approx(10 / ((11 * 10 + 40 * 0.5) / 51))  # 3.92x
    space = dataclasses.replace(SPACE, branches=(0,), acts=("replay",), intervals=(5, 6))
    kept = plan.prune(plan.candidates(50, space), macs, 50, 4.0, calls)
    assert [s.name for s, _ in kept] == ["steps-11", "N6-b0-uniform-replay"]  # by steps: 12 and N = 5


def test_every_candidate_is_rebuilt_from_its_row():
    for c in plan.candidates(12, Space()):
        row = dict(candidate=c.name, steps=c.steps) | plan._config_columns(c.cache)
        assert plan.setting_of(row) == c


def test_the_planner_finds_a_planted_best_candidate_on_calibration_seeds_only(planner, monkeypatch):
    seeds = []
    run = Sweep.run
    monkeypatch.setattr(Sweep, "run", lambda self, s, chunk: seeds.extend(chunk) or run(self, s, chunk))
    kept = plan.prune(plan.candidates(6, SPACE), planner.macs, 6, 1.2)
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


def test_the_forecast_in_lambda_is_searched_where_the_scheduler_has_noise_levels(tmp_path):
    """DDIM has alphas_cumprod: its lambda candidates are searched; a scheduler without them
    (a sampler that gives no noise levels) leaves them out rather than failing on them."""
    unet, _ = tiny_unet("ddpm")
    space = dataclasses.replace(SPACE, acts=("replay", "forecast2-lambda"))
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(clip_sample=False))
    names = [
        s.name for s in plan.candidates(6, Planner(pipe, tmp_path, 6, "unconditional", space=space).space)
    ]
    assert "N2-b0-uniform-forecast2-lambda" in names
    del pipe.scheduler.alphas_cumprod
    planner = Planner(pipe, tmp_path, 6, "unconditional", space=space)
    assert planner.space.acts == ("replay",)


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


def _validation_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "validate_plan.py"
    spec = importlib.util.spec_from_file_location("validate_plan", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_pick_is_a_hit_where_it_lies_within_the_best_candidates_interval():
    summary = _validation_script().summary
    row = dict(caching=True, evaluation_db_hi=0.0, front=True)
    rows = [
        dict(
            row, budget=2.0, candidate="a", evaluation_db=40.0, evaluation_db_lo=39.0, pick=False, best=True
        ),
        dict(
            row, budget=2.0, candidate="b", evaluation_db=39.5, evaluation_db_lo=38.0, pick=True, best=False
        ),
        dict(
            row, budget=3.0, candidate="c", evaluation_db=35.0, evaluation_db_lo=34.0, pick=False, best=True
        ),
        dict(
            row,
            budget=3.0,
            candidate="d",
            evaluation_db=33.9,
            evaluation_db_lo=33.0,
            pick=True,
            best=False,
            caching=False,
        ),  # fmt: skip
    ]
    text = summary(rows, "about")
    assert _validation_script().report(rows, [], "about") == text  # without FID: the verdicts alone
    assert "| 2x | b | a |" in text and "| yes | caching |" in text
    assert "| 3x | d | c |" in text and "| no | caching, fewer steps |" in text
    assert text.rstrip().endswith("hit rate: 1 of 2 budgets")


def test_the_validation_script_end_to_end(tmp_path, capsys):
    from cachediff.metrics import fid

    script = _validation_script()
    fid.save_stats(tmp_path / "ref.npz", np.zeros(2048), np.eye(2048))
    args = ["--steps", "6", "--budgets", "1.5", "--calibration", "2", "--evaluation", "4", "--shard", "2"]
    args += ["--converged-steps", "12", "--repeats", "1", "--branches", "1", "2", "--acts", "replay"]
    args += ["--out", str(tmp_path / "runs"), "--results", str(tmp_path / "docs")]
    assert script.main(args) == 0
    assert "FID" not in (tmp_path / "docs" / "validation.md").read_text()
    planned = (tmp_path / "docs" / "plan.json").read_text()
    searched = {(r["branch"], r["act"]) for r in json.loads(planned)["rows"] if r["interval"] > 1}
    assert searched and {act for _, act in searched} == {"replay"} and {b for b, _ in searched} <= {1, 2}
    shutil.rmtree(tmp_path / "runs" / "plan")  # FID from the recorded plans: nothing planned again
    args += ["--fid-images", "6", "--fid-reference", str(tmp_path / "ref.npz"), "--fid-resamples", "3"]
    assert script.main([*args, "--from-results"]) == 0
    assert (
        not (tmp_path / "runs" / "plan").exists() and (tmp_path / "docs" / "plan.json").read_text() == planned
    )
    record = json.loads((tmp_path / "docs" / "validation.json").read_text())
    rows, quality = record["rows"], record["quality"]
    pick = next(r["candidate"] for r in rows if r["pick"])
    assert [(q["role"], q["budget"]) for q in quality] == [
        ("uncached", None),
        ("fewer steps", 1.5),
        ("pick", 1.5),
    ]
    assert quality[0]["setting"] == "steps-6" and quality[2]["setting"] == pick
    assert all(q["samples"] == 6 and q["fid_lo"] < q["fid"] < q["fid_hi"] for q in quality)
    assert all(0 <= q["class_score_lo"] <= q["class_score"] <= q["class_score_hi"] <= 1 for q in quality)
    assert "| 1.5x | pick | " + pick in (tmp_path / "docs" / "validation.md").read_text()
    assert sum(r["pick"] for r in rows) == 1 and sum(r["best"] for r in rows) == 1
    assert all(r["images"] == 4 and r["evaluation_db_lo"] <= r["evaluation_db"] for r in rows)
    assert "hit rate: " in (tmp_path / "docs" / "validation.md").read_text()
    assert (tmp_path / "docs" / "plan.png").exists()
    evaluated = sorted(p.name for p in (tmp_path / "runs" / "evaluation").glob("*/samples_*"))
    assert evaluated and evaluated[0] == "samples_000000.npy"  # evaluation seeds start at 0
    assert script.main([*args, "--from-results", "--steps", "5"]) == 2  # not what was validated
    assert "not tiny-sd at 5 steps" in capsys.readouterr().err
