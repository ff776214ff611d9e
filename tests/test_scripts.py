"""The command-line scripts: help on every flag, clear errors for bad arguments, smoke runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import diffusers
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from cachediff import DeepCacheConfig
from cachediff.rows import Setting, params

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [
    "main.py",
    "stable_diffusion.py",
    "stable_diffusion_xl.py",
    "stable_video_diffusion.py",
    "scripts/bench.py",
    "scripts/macs.py",
    "scripts/cache_memory.py",
    "scripts/profile_helpers.py",
    "scripts/plot_sweep.py",
    "scripts/sweep.py",
    "scripts/schedule_proxy.py",
    "scripts/validate_plan.py",
    "scripts/report_fidelity.py",
    "scripts/report_solvers.py",
    "scripts/fit_weights.py",
    "experiments/ddpm/train_mnist.py",
    "experiments/ddpm/training_report.py",
    "experiments/ddpm/sample_stats.py",
    "experiments/ddpm/report_mnist.py",
    "experiments/ldm/sample_ldm.py",
    "experiments/lowpass_fit.py",
    "experiments/trailing_stride.py",
    "experiments.sd.train_tiny_sd",  # a module: python -m experiments.sd.train_tiny_sd
    "experiments.sd.report_tiny_sd",
]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


#: Runs a script up to its ``parse_args`` and prints the flags of its parser, and those without help.
FLAGS_PROBE = """
import argparse, json, runpy, sys

def report(parser, args=None, namespace=None):
    flags = [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS]
    missing = [a.option_strings[-1] for a in flags if not (a.help or "").strip()]
    print(json.dumps(dict(flags=[a.option_strings[-1] for a in flags], missing=missing)))
    raise SystemExit(0)

argparse.ArgumentParser.parse_args = report
script = sys.argv[1]
sys.argv = [script]
if script.endswith(".py"):  # as `python script.py` runs it, but without its folder on sys.path:
    runpy.run_path(script, run_name="__main__")  # scripts do not import each other
else:  # as `python -m package.module` runs it
    runpy.run_module(script, run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_has_help(script):
    found = json.loads(run("-c", FLAGS_PROBE, script).stdout.strip().splitlines()[-1])
    assert len(found["flags"]) > 1, found  # --help and the script's own
    assert found["missing"] == [], f"{script}: flags without help: {found['missing']}"
    assert "usage:" in run(*(["-m"] if not script.endswith(".py") else []), script, "--help").stdout


VALIDATION = ["--out", "runs-never-made", "--results", "results-never-made"]  # refused before either is made


@pytest.mark.parametrize(
    "args,message",
    [
        (["main.py", "--model_type", "sd9"], "invalid choice"),
        (["main.py", "--batch_size", "0"], "must be >= 1"),
        (["main.py", "--cache_interval", "0"], "interval must be an integer >= 1"),
        (["main.py", "--cache_branch_id", "9"], "branch must be an integer in 0..8"),
        (["main.py", "--model", "/no/such/folder"], "no model folder"),
        (["main.py", "--output", "/dev/null/x"], "a parent is a file"),
        (["main.py", "--output", "README.md"], "'README.md' as the output folder: it is a file"),
        (["main.py", "--device", "foo"], "unknown device 'foo'"),
        (["scripts/sweep.py", "--out", "/dev/null/x"], "a parent is a file"),
        (["scripts/sweep.py", "--device", "cuda:7"], "device 'cuda:7'"),
        (["main.py", "--reuse", "cache", "--order", "3"], "order is only used with reuse='forecast'"),
        (["main.py", "--fallback"], "fallback is only used with reuse='forecast'"),
        (["main.py", "--forecast_time", "shallow"], "time is only used with reuse='forecast'"),
        (["main.py", "--cache_phases", "0.5"], "expected START:BRANCH such as 0.5:2, got '0.5'"),
        (["main.py", "--cache_phases", "0.5:2", "--schedule", "adaptive"], "phases take a static schedule"),
        (["main.py", "--cache_phases", "0.5:20", "--steps", "2"], "branch must be an integer in 0..8"),
        (["main.py", "--no_refresh"], "refresh is True or False, with phases only; got False"),
        (["main.py", "--reuse", "forecast", "--forecast_time", "t"], "invalid choice: 't'"),
        (["scripts/schedule_proxy.py", "--budgets", "1"], "every budget N >= 2"),
        (["experiments/ldm/sample_ldm.py", "--ckpt", "x", "--shard", "0"], "must be >= 1"),
        (["experiments/lowpass_fit.py", "--pool", "0", "--", "--samples", "1"], "--pool must be >= 1"),
        (["experiments/trailing_stride.py", "--steps", "0", "--out", "x"], "every --steps must be >= 1"),
        (["scripts/macs.py", "--interval", "0"], "must be >= 1"),
        (["scripts/bench.py", "--repeats", "0"], "must be >= 1"),
        (["scripts/bench.py", "--threads", "0"], "--threads must be >= 1"),  # issue 30: a traceback
        (["scripts/bench.py", "--out", "/dev/null/x"], "a parent is a file"),
        # issue 31: accepted silently before
        (["main.py", "--shallow_blocks", "1", "--steps", "2"], "--shallow_blocks is for DiT models"),
        (["main.py", "--model_type", "ddpm-mnist", "--prompt", "a cat"], "takes no --prompt"),
        (["main.py", "--model_type", "ddpm-mnist", "--guidance_scale", "2"], "takes no --prompt or --guid"),
        (["main.py", "--guidance_scale", "nan"], "--guidance_scale must be a finite number >= 0"),
        (["experiments/ldm/sample_ldm.py", "--ckpt", "x", "--scale", "nan"], "finite number >= 0"),
        (["scripts/sweep.py", "--guidance-scale", "inf"], "--guidance-scale must be a finite number"),
        (["scripts/sweep.py", "--prompts", ""], "--prompts must name a prompt set"),
        (["scripts/sweep.py", "--retime", "--repeats", "0"], "--retime measures the speed again"),
        (
            ["scripts/validate_plan.py", *VALIDATION, "--fid-images", "200"],
            "--fid-images needs --fid-reference",
        ),
        (
            ["scripts/validate_plan.py", *VALIDATION, "--fid-images", "250", "--fid-reference", "mnist"],
            "--fid-images and --evaluation must be multiples of --shard",
        ),
    ],
)
def test_bad_arguments_fail_with_a_clear_message(args, message):
    proc = run(*args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]


def test_main_help_states_the_presets_batch_sizes():
    """Issue 31: the help said "16 or 1" where the tiny SD's default batch is 10."""
    from cachediff.pipelines import PRESETS

    text = " ".join(run("main.py", "--help").stdout.split())
    assert f"tiny-sd {PRESETS['tiny-sd'].batch}," in text and "ddpm-mnist 16" in text


def test_bench_quick_smoke(tmp_path):
    for arch in ("ddpm-cifar10", "sd1.5"):  # a second run adds its rows to the first one's
        run("scripts/bench.py", "--quick", "--archs", arch, "--threads", "1", "--out", str(tmp_path))
    rows = pd.read_csv(tmp_path / "results.csv")
    assert list(zip(rows.arch, rows.interval, rows.branch, strict=True)) == [
        (arch, i, b) for arch in ("ddpm-cifar10", "sd1.5") for i, b in [(3, 0), (5, 0), (5, 1)]
    ]
    assert "| sd1.5 " in (tmp_path / "table.md").read_text()
    assert (rows.cachediff_cache_mib * 10 <= rows.official_cache_mib).all()
    assert (rows.mac_bound > 1).all()
    peaks = rows[["baseline_peak_mib", "official_peak_mib", "cachediff_peak_mib"]]
    assert peaks.notna().all().all() and (peaks >= 0).all().all()
    assert rows.official_peak_mib.max() > 0  # measured: the official helper holds every block's output


@pytest.mark.skipif(
    diffusers.__version__ == "0.24.0", reason="the GPU check installs the newest diffusers; runs in that env"
)
def test_the_gpu_check_runs_in_its_quick_mode(tmp_path):
    """scripts/gpu_check.sh --quick: the GPU table's code on a tiny SD 1.5-shaped U-Net on the CPU, eager
    and in the CUDA-graph mode (dynamo only here, with the session's copies out of the graphs' pool).
    Minutes of tracing: run in the newest-diffusers environment only, the one gpu_check.sh installs."""
    env = dict(os.environ, GPU_CHECK_OUT=str(tmp_path), PYTHON=sys.executable)
    command = ["bash", "scripts/gpu_check.sh", "--quick", "--archs", "sd1.5", "--threads", "1"]
    proc = subprocess.run([*command, "--modes", "reduce-overhead", "eager"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "results.csv")
    settings = ["uncached", "I3-B0", "I5-B0", "I5-B1", "I5-B0-forecast", "I5-B0-forecast-shallow"]
    assert list(zip(rows["mode"], rows.setting, strict=True)) == [
        *(("eager", s) for s in [*settings, "official I3-B0"]),
        *(("reduce-overhead", s) for s in settings),
    ]  # eager first, whatever the order asked
    graphs = rows[rows["mode"] == "reduce-overhead"]
    assert (graphs.max_abs_diff_vs_eager == 0).all() and (graphs.graphs_after_warmup == 0).all()
    cached = rows[rows.setting.str.startswith("I")]
    assert (cached.cached_call_ms < cached.full_call_ms).all() and (cached.mac_bound > 1).all()
    replay, forecast, fit = (
        rows[rows.setting == s].cache_mib.iloc[0]
        for s in ("I5-B0", "I5-B0-forecast", "I5-B0-forecast-shallow")
    )
    assert replay > 0 and forecast == 2 * replay and fit > forecast  # two features; the fit, their probes too
    assert set(rows.device) == {"cpu (1 threads)"} and "| reduce-overhead |" in proc.stdout  # the table


def test_both_helpers_run_the_same_convolutions_and_matmuls():
    out = run(
        "scripts/profile_helpers.py", "--arch", "ddpm-cifar10", "--steps", "3", "--interval", "3"
    ).stdout
    assert "operators called equally often" in out
    table = out.split("\n\n")[0]
    assert "aten::clone" in table  # differing operators are listed ...
    for op in ("convolution", "addmm", "bmm", "group_norm"):  # ... and the heavy ones do not differ
        assert f"aten::{op} " not in table and f"aten::{op}|" not in table


def test_macs_script_prints_every_branch(tmp_path):
    out = run(
        "scripts/macs.py", "--arch", "ddpm-cifar10", "--steps", "100", "--csv", str(tmp_path / "m.csv")
    ).stdout
    assert "| 11 (12) |" in out
    assert len(pd.read_csv(tmp_path / "m.csv")) == 12


def sweep_row(name: str, steps: int, config: DeepCacheConfig | None, **values) -> dict:
    """A row of the sweep schema for a setting, with its parameter columns."""
    return dict(setting=name, sampler="DDIMScheduler", **params(Setting(name, steps, config)), **values)


def test_plot_sweep_writes_plots_and_table(tmp_path):
    rows = [
        sweep_row("ddim-100", 100, None, fid=5.0),
        sweep_row("ddim-50", 50, None, fid=6.0),
        sweep_row("N5-b2", 100, DeepCacheConfig(5, 2), fid=5.5),
        sweep_row("N5-b0", 100, DeepCacheConfig(5, 0), fid=7.0),
        sweep_row("N5-b2-zeros", 100, DeepCacheConfig(5, 2, reuse="zeros"), fid=90.0),
        sweep_row("N5-b2-adaptive", 100, DeepCacheConfig(5, 2, schedule="adaptive"), fid=5.2),
    ]
    for r in rows:
        r.update(gmacs_per_image=0.1 * r["steps"], mac_speedup=1.5, measured_speedup=1.4)
        r.update(psnr_db=30.0, samples=10, n_full=20, fid_lo=r["fid"] - 0.5, fid_hi=r["fid"] + 0.25)
        r.update(sampler="DDIMScheduler", spacing="trailing")
    pd.DataFrame(rows).to_csv(tmp_path / "r.csv", index=False)
    for k, name in enumerate(["ddim-100", "N5-b2"]):  # sample shards as the sweep writes them
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "samples_000000.npy", np.full((4, 1, 28, 28), 100 * k, np.uint8))
    csv, out = str(tmp_path / "r.csv"), str(tmp_path / "out")
    run("scripts/plot_sweep.py", csv, "--out", out, "--grid", "ddim-100", "N5-b2", "--grid-images", "3")
    table = (tmp_path / "out" / "table.md").read_text()
    assert re.search(r"\| N5-b2-adaptive\s+\| adaptive\s+\|", table), table
    assert table.startswith("DDIM, trailing spacing; intervals: 95%") and "5.5 [5, 5.75]" in table
    for name in ("fid_vs_cost.png", "per_branch.png", "table.md", "results.csv", "samples.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert pd.read_csv(tmp_path / "out" / "results.csv").equals(pd.read_csv(csv))  # the CSV as it was
    grid = plt.imread(tmp_path / "out" / "samples.png")
    assert np.isclose(grid[..., 0], 100 / 255, atol=0.01).sum() > 500  # the grey row is drawn
    proc = run("scripts/plot_sweep.py", csv, "--out", out, "--grid", "N10-b2", check=False)
    assert proc.returncode != 0 and "no samples in" in proc.stderr and "N10-b2" in proc.stderr


def test_report_mnist_pairs_each_interval_with_the_ddim_run_of_equal_macs():
    out = run("experiments/ddpm/report_mnist.py", "docs/results/mnist-clip/results.csv").stdout
    for pair in ("N2-b2 | 1.32x | 23.02 | ddim-76", "N5-b2 | 1.63x | 25.07 | ddim-61"):
        assert pair in out
    assert "Not yet measured: N5-b0, N5-b1, N5-b3" in out  # the archived sweep has no branch suite
    assert "| N10-b2-adaptive-cap | 11 | 23.38 |" in out
    over_20 = out.split("DeepCache over 20 DDIM steps")[1]
    assert "| ddim-20 | 20 | 14.89 |" in over_20 and "| s20-N2-b0 | 10 | 20.01 |" in over_20


def test_report_mnist_curve_lists_every_measured_step_count_in_order(tmp_path):
    df = pd.read_csv("docs/results/mnist-clip/results.csv")
    extra = df[df.setting == "ddim-10"].assign(setting="ddim-11", steps=11)  # not a CURVE count
    pd.concat([df, extra]).to_csv(tmp_path / "r.csv", index=False)
    out = run("experiments/ddpm/report_mnist.py", tmp_path / "r.csv").stdout
    curve = out.split("FID against the DDIM step count")[1].split("###")[0]
    assert curve.index("| ddim-20 |") < curve.index("| ddim-11 |") < curve.index("| ddim-10 |")


def test_plot_sweep_reads_the_pipeline_sweep_columns(tmp_path):
    rows = [
        sweep_row("plms-50", 50, None, clip_score=30.0),
        sweep_row("plms-25", 25, None, clip_score=29.0),
        sweep_row("N3-b0-uniform", 50, DeepCacheConfig(3, 0), clip_score=29.8),
        sweep_row("N3-b1-uniform", 50, DeepCacheConfig(3, 1), clip_score=29.9),
    ]
    for r in rows:
        r.update(gmacs_per_image=r["steps"] / (r["interval"] + 1), psnr_db=30.0, measured_speedup=1.5)
    pd.DataFrame(rows).to_csv(tmp_path / "r.csv", index=False)
    out = run(
        "scripts/plot_sweep.py",
        str(tmp_path / "r.csv"),
        "--out",
        str(tmp_path / "o"),
        "--quality",
        "clip_score",
    )
    assert "clip_score_vs_cost.png, per_branch.png" in out.stdout
    table = (tmp_path / "o" / "table.md").read_text()
    assert "paper_branch" in table and "clip_score" in table and "mmacs_per_step" in table


@pytest.mark.slow  # about a minute on 2 cores: 100-step baseline, Inception and two 2048-d FIDs
def test_mnist_sweep_runs_only_the_settings_asked_for(tmp_path):
    out = tmp_path / "sweep"
    args = ["--model_type", "ddpm-mnist", "--samples", "4", "--shard", "2", "--fid-reference", "mnist"]
    args += ["--reference-images", "4", "--timing-images", "2", "--repeats", "1", "--suites", "curve"]
    run("scripts/sweep.py", *args, "--only", "ddim-1?", "--out", str(out))
    rows = pd.read_csv(out / "results.csv").set_index("setting")
    assert list(rows.index) == ["ddim-100", "ddim-10"]
    assert rows.loc["ddim-10", "mac_speedup"] == pytest.approx(10.0)
    assert rows.loc["ddim-10", "psnr_db"] < rows.loc["ddim-100", "psnr_db"] == float("inf")
    assert sorted(p.name for p in (out / "ddim-10").glob("samples_*")) == [
        "samples_000000.npy",
        "samples_000002.npy",
    ]


def test_report_fidelity_tabulates_each_sampler_and_spacing(tmp_path):
    rows = []
    for sampler, spacing, steps, db in [
        ("PNDMScheduler", "leading", 10, 25.0),
        ("PNDMScheduler", "trailing", 10, 30.0),
    ]:
        row = dict(setting=f"plms-{steps}", method="uncached", sampler=sampler, spacing=spacing, steps=steps)
        row.update(
            psnr_conv_mean_db=db,
            psnr_conv_mean_db_lo=db - 1,
            psnr_conv_mean_db_hi=db + 1,
            psnr_conv_db=db - 3,
        )
        row.update(
            psnr_conv_db_lo=db - 4, psnr_conv_db_hi=db - 2, fidelity_images=200, converged="DPM-Solver++ 2M"
        )
        rows.append(row)
        pd.DataFrame([row]).to_csv(tmp_path / f"{spacing}.csv", index=False)
    run(
        "scripts/report_fidelity.py",
        str(tmp_path / "leading.csv"),
        str(tmp_path / "trailing.csv"),
        "--out",
        str(tmp_path),
    )
    table = (tmp_path / "fidelity.md").read_text()
    assert "| PLMS | leading | 10 | 25.0 [24.0, 26.0] | 22.0 [21.0, 23.0] | 200 |" in table
    assert "| PLMS | trailing | 10 | 30.0 [29.0, 31.0] |" in table and (tmp_path / "fidelity.png").exists()


def test_fit_weights_lists_each_cached_step_with_the_timesteps_weights_and_the_fitted_ones():
    """9 steps at N = 3: cached steps 1, 2, 4, 5, 7, 8, the first two with one full step kept (replay,
    nothing fitted); the fitted weights of each row sum to 1, as the timestep's do."""
    out = run(
        "scripts/fit_weights.py", "--steps", "9", "--interval", "3", "--scheduler", "DDIMScheduler"
    ).stdout
    assert "pattern FCCFCCFCC" in out
    rows = [line.split(" | ") for line in out.splitlines() if re.match(r"^\| \d", line)]
    assert len(rows) == 4
    for _, clock, fitted in rows:
        weights = [float(w) for w in fitted.rstrip(" |").split(", ")]
        assert len(weights) == 2 and abs(sum(weights) - 1) < 2e-3
        oldest = float(clock.split(", ")[0])  # one or two steps past the last of two full steps 3 apart
        assert min(abs(oldest + 1 / 3), abs(oldest + 2 / 3)) < 0.02
    assert run("scripts/fit_weights.py", "--interval", "1", check=False).stderr.endswith(
        "--interval must be >= 2 (1 caches nothing), got 1\n"
    )


SOLVER_SWEEP = [  # setting, grey levels off the converged image, MAC speedup, columns
    ("dpmpp-25", 0, 1.0, dict(method="uncached")),
    ("dpmpp-14", 4, 1.8, dict(method="uncached")),
    ("dpmpp-7", 8, 3.6, dict(method="uncached")),
    ("N2-b0", 8, 1.82, dict(method="uniform", reuse="cache", interval=2)),
    ("N2-b0-f2-timestep", 2, 1.82, dict(method="uniform + forecast 2", reuse="forecast", order=2,
                                        time="timestep", interval=2)),
    ("N2-b0-f2-lambda", 1, 1.82, dict(method="uniform + forecast 2", reuse="forecast", order=2,
                                      time="lambda", interval=2)),
    ("N2-b0-f2-shallow", 1, 1.82, dict(method="uniform + forecast 2", reuse="forecast", order=2,
                                       time="shallow", interval=2)),
]  # fmt: skip


def report_solvers(tmp_path, *extra, second_set: dict | None = None, sweep=SOLVER_SWEEP):
    """A sweep of 4 seeds (8 with ``second_set``: setting -> its offset on seeds 4..7) whose every
    image lies its setting's offset in grey levels off the converged one; the report's table."""
    n = 8 if second_set else 4
    converged = np.full((n, 1, 2, 2), 100, dtype=np.uint8)
    (tmp_path / "conv").mkdir()
    np.save(tmp_path / "conv" / "samples_000000.npy", converged)
    rows = []
    for name, offset, speedup, extra_columns in sweep:
        (tmp_path / "sweep" / name).mkdir(parents=True)
        offsets = np.full((n, 1, 1, 1), offset, dtype=np.uint8)
        offsets[4:] = (second_set or {}).get(name, offset)
        np.save(tmp_path / "sweep" / name / "samples_000000.npy", converged + offsets)
        db = 100.0 if offset == 0 else 20 * np.log10(2 / (offset / 127.5))
        row = dict(
            setting=name, sampler="DPMSolverMultistepScheduler", spacing="trailing", steps=25, branch=0
        )
        row |= extra_columns | dict(mac_speedup=speedup, fidelity_images=4, converged="DPM-Solver++ 2M")
        rows.append(
            row | dict(psnr_conv_mean_db=db, psnr_conv_mean_db_lo=db - 1, psnr_conv_mean_db_hi=db + 1)
        )
    pd.DataFrame(rows).to_csv(tmp_path / "sweep.csv", index=False)
    out = tmp_path / "report"
    run("scripts/report_solvers.py", str(tmp_path / "sweep.csv"), "--samples", str(tmp_path / "sweep"),
        "--converged", str(tmp_path / "conv"), "--out", str(out), *extra)  # fmt: skip
    return (out / "solver.md").read_text()


def test_report_solvers_pairs_each_setting_with_fewer_steps_and_its_timestep_twin(tmp_path):
    """Every image of a setting lies d grey levels off the converged one, so each paired difference
    is 20 log10 of a ratio of offsets: 2 levels against 4 is +6.02 dB, exactly, on every seed."""
    table = report_solvers(tmp_path)
    out = tmp_path / "report"
    assert "| 2 | N2-b0-f2-timestep | forecast 2 in timestep | 1.82x |" in table
    assert "| dpmpp-14 (1.80x) | 6.02 [6.02, 6.02] | better |" in table  # 2 levels against 4
    assert "| N2-b0 | replay |" in table and "| dpmpp-14 (1.80x) | -6.02 [-6.02, -6.02] | worse |" in table
    assert "| N2-b0-f2-lambda | N2-b0-f2-timestep | 6.02 [6.02, 6.02] | better |" in table
    assert "| N2-b0-f2-shallow | N2-b0-f2-timestep | 6.02 [6.02, 6.02] | better |" in table
    paired = pd.read_csv(out / "paired.csv")
    assert len(paired) == 6 and (out / "solver.png").exists()


def test_report_solvers_sets_per_phase_cuts_against_each_of_their_branches_alone(tmp_path):
    """A forecast cut at branch 0, then 2, 4 levels off: -6.02 dB against branch 0 alone (2 levels),
    -12.04 against branch 2 alone (1 level); the acts name their cuts."""
    forecast = dict(method="uniform + forecast 2", reuse="forecast", order=2, time="timestep", interval=2)
    sweep = [
        *SOLVER_SWEEP[:2],
        ("N2-b0-f2-timestep", 2, 1.82, forecast),
        ("N2-b2-f2-timestep", 1, 1.4, forecast | dict(branch=2)),
        ("N2-b0-late2-f2-timestep", 4, 1.6, forecast | dict(phases="[(0.5, 2)]")),
    ]
    table = report_solvers(tmp_path, sweep=sweep)
    assert "| N2-b0-late2-f2-timestep | N2-b0-f2-timestep | -6.02 [-6.02, -6.02] | worse |" in table
    assert "| N2-b0-late2-f2-timestep | N2-b2-f2-timestep | -12.04 [-12.04, -12.04] | worse |" in table
    assert "| forecast 2 in timestep, b0, from 0.5 b2 |" in table


def test_report_solvers_scores_a_second_seed_set_from_its_images(tmp_path):
    """On seeds 4..7 the timestep forecast lies 4 levels off, as 14 steps do: a difference of 0 there,
    and its own cell is of those seeds (20 log10(2 / (4 / 127.5)) = 36.09 dB), not the CSV's."""
    table = report_solvers(tmp_path, "--seeds", "4", "8", second_set={"N2-b0-f2-timestep": 4})
    assert table.startswith("tiny SD, DPM-Solver++ 2M 25 steps, trailing spacing: seeds 4..7")
    assert "| N2-b0-f2-timestep | forecast 2 in timestep | 1.82x | 36.09 [36.09, 36.09] |" in table
    assert "| dpmpp-14 (1.80x) | 0.00 [0.00, 0.00] | within the interval |" in table
    folders = ["--samples", str(tmp_path / "sweep"), "--converged", str(tmp_path / "conv")]
    bad = run("scripts/report_solvers.py", str(tmp_path / "sweep.csv"), *folders, "--out", str(tmp_path),
              "--seeds", "5", "5", check=False)  # fmt: skip
    assert bad.returncode == 2 and "--seeds needs 0 <= START < STOP, got 5 5" in bad.stderr
