"""``scripts/sweep.py`` end to end on tiny pipelines: the grid, resumption, CLIP score, and sharding
across two processes under ``torchrun`` with files identical to one process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import save_tiny_clip, save_tiny_pipeline

from cachediff.rows import COLUMNS, setting_of

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sweep_script", ROOT / "scripts" / "sweep.py")
script = importlib.util.module_from_spec(_spec)  # the script as a module, without touching sys.path
_spec.loader.exec_module(script)


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory):
    return save_tiny_pipeline("ddpm", tmp_path_factory.mktemp("ddpm"))


def args(model, out, *extra) -> list[str]:
    base = ["--model_type", "ddpm-cifar10", "--model", str(model), "--steps", "6", "--samples", "3"]
    return [*base, "--shard", "2", "--repeats", "1", "--timing-images", "1", "--out", str(out), *extra]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("samples_*.npy"))}


def test_grid_rows_and_resumption(ddpm, tmp_path, monkeypatch):
    grid = ["--intervals", "2", "3", "--branches", "0", "1", "--schedules", "uniform", "adaptive"]
    assert script.main(args(ddpm, tmp_path, *grid, "--suites", "grid", "curve", "--curve", "4")) == 0
    rows = pd.read_csv(tmp_path / "results.csv")
    assert len(rows) == 1 + 2 * 2 * 2 + 1 and rows.setting.is_unique
    assert list(rows.columns) == [c for c in COLUMNS if c in rows]  # one schema, in order
    base = rows.set_index("setting").loc["ddim-6"]
    assert base.method == "uncached" and base.mac_speedup == 1 and base.n_full == 6
    cached = rows[rows.interval > 1]
    assert (cached.mac_speedup > 1).all() and (cached.n_full < 6).all() and cached.psnr_db.notna().all()
    assert set(cached.method) == {"uniform", "adaptive"} and set(cached.paper_branch) == {1, 2}
    assert rows.set_index("setting").loc["ddim-4"].mac_speedup == pytest.approx(1.5)
    assert all(setting_of(r).name == r["setting"] for r in rows.to_dict("records"))

    before = files(tmp_path)
    (tmp_path / "results.csv").write_text(rows.drop(index=3).to_csv(index=False))  # lose one row
    generated = []
    monkeypatch.setattr(script.Sweep, "run", lambda *a: generated.append(a) or pytest.fail("regenerated"))
    monkeypatch.setattr(script, "speed", lambda *a: {})  # timing would generate again
    assert script.main(args(ddpm, tmp_path, *grid, "--suites", "grid", "curve", "--curve", "4")) == 0
    again = pd.read_csv(tmp_path / "results.csv")
    assert len(again) == len(rows) and not generated and files(tmp_path) == before
    restored = again.set_index("setting").loc[rows.setting[3]]
    assert restored.gmacs_per_image == pytest.approx(rows.gmacs_per_image[3])


def test_rows_kept_elsewhere_resume_a_sweep_whose_samples_are_gone(ddpm, tmp_path):
    kept, common = tmp_path / "kept.csv", ["--results", str(tmp_path / "kept.csv"), "--suites", "interval"]
    assert script.main(args(ddpm, tmp_path / "lost", *common, "--intervals", "2")) == 0
    first = pd.read_csv(kept)
    assert script.main(args(ddpm, tmp_path / "new", *common, "--intervals", "2", "3")) == 0
    rows = pd.read_csv(kept).set_index("setting")
    assert len(rows) == 3 and rows.loc["N2-b2"].equals(first.set_index("setting").loc["N2-b2"])
    assert sorted(files(tmp_path / "new")) == [  # the baseline's first shard, for PSNR, and the new one
        "N3-b2/samples_000000.npy", "N3-b2/samples_000002.npy", "ddim-6/samples_000000.npy"
    ]  # fmt: skip
    assert not (tmp_path / "new" / "results.csv").exists()


def test_a_resume_with_other_options_times_rescores_or_refuses(ddpm, tmp_path, capsys):
    one = [*args(ddpm, tmp_path, "--suites", "interval", "--intervals", "2")]
    assert script.main([*one, "--repeats", "0"]) == 0
    before, rows = files(tmp_path), pd.read_csv(tmp_path / "results.csv")
    assert "measured_speedup" not in rows and (rows.samples == 3).all()
    assert script.main(one) == 0  # --repeats 1: the rows are timed, nothing is sampled again
    rows = pd.read_csv(tmp_path / "results.csv")
    assert rows.measured_speedup.notna().all() and files(tmp_path) == before
    assert script.main([*one, "--samples", "4"]) == 0
    assert "scoring again, as it holds 3 samples, not 4" in capsys.readouterr().out
    rows = pd.read_csv(tmp_path / "results.csv")
    assert len(rows) == 2 and (rows.samples == 4).all() and len(files(tmp_path)) == 2 * 2
    assert script.main([*one, "--samples", "2"]) == 2  # would replace rows by noisier ones
    assert "holds 4 samples and this run asks for 2" in capsys.readouterr().err


def test_a_row_lacks_the_class_score_only_where_the_prompts_name_classes():
    options, tiny = script.parse_args(["--model_type", "tiny-sd"]), script.get_preset("tiny-sd")
    assert script.scored_columns(options, tiny, ["a photo of a bag", "a coat"]) == ["class_score"]
    assert script.scored_columns(options, tiny, ["a photo of a bag", "a red fox"]) == []  # never scored
    with_fid = script.parse_args(["--model_type", "sd1.5", "--fid-reference", "mnist"])
    assert script.scored_columns(with_fid, script.get_preset("sd1.5"), ["a bag"]) == ["fid", "fid_lo"]
    bare = script.parse_args(["--model_type", "sd1.5", "--fid-reference", "mnist", "--fid-resamples", "0"])
    assert script.scored_columns(bare, script.get_preset("sd1.5"), ["a bag"]) == ["fid"]
    converged = script.parse_args(["--model_type", "sd1.5", "--converged-steps", "200"])
    assert script.scored_columns(converged, script.get_preset("sd1.5"), ["a bag"]) == ["psnr_conv_db"]


def test_text_to_image_with_prompts_and_clip_score(tmp_path):
    sd, clip = save_tiny_pipeline("sd", tmp_path / "sd"), save_tiny_clip(tmp_path / "clip")
    extra = ["--model_type", "sd1.5", "--model", str(sd), "--steps", "4", "--samples", "2", "--shard", "2"]
    extra += ["--intervals", "2", "--repeats", "0", "--clip", str(clip), "--out", str(tmp_path / "out")]
    assert script.main(extra) == 0
    rows = pd.read_csv(tmp_path / "out" / "results.csv")
    assert rows.clip_score.between(0, 100).all() and "measured_speedup" not in rows


def test_the_tiny_sd_sweep_scores_the_prompted_classes_and_records_its_guidance(tmp_path, capsys):
    tiny = ["--model_type", "tiny-sd", "--steps", "3", "--samples", "10", "--shard", "10", "--intervals", "2"]
    tiny += ["--repeats", "0", "--out", str(tmp_path)]
    assert script.main(tiny) == 0
    rows = pd.read_csv(tmp_path / "results.csv")
    assert rows.class_score.between(0, 1).all() and rows.class_accuracy.between(0, 1).all()
    assert len(rows) == 2 and rows.class_score.nunique() == 2  # each setting scored on its own images
    card = script.loading.model_card(script.get_preset("tiny-sd").model_path())
    assert json.loads((tmp_path / "sampler.json").read_text())["guidance_scale"] == card["guidance_scale"]
    assert script.main([*tiny, "--guidance-scale", "1.5"]) == 2  # other samples than those on disk
    assert "guidance_scale" in capsys.readouterr().err


def test_bad_input_is_a_clear_error(ddpm, tmp_path, capsys):
    assert script.main(args(ddpm, tmp_path, "--fid-reference", str(tmp_path / "none.npz"))) == 2
    assert "no FID reference statistics" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("not statistics\n")  # before: "pickled (object) data" after sampling
    assert script.main(args(ddpm, tmp_path / "out", "--fid-reference", str(tmp_path / "notes.txt"))) == 2
    assert "notes.txt' holds no FID statistics" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*/samples_*"))  # nothing sampled
    assert script.main(args(ddpm, tmp_path, "--branches", "99")) == 2
    assert "branch must be" in capsys.readouterr().err
    for bad in (["--intervals", "0"], ["--steps", "0"], ["--threads", "0"], ["--threads", "-2"]):
        with pytest.raises(SystemExit):  # argparse's one-line error, before any work
            script.main(args(ddpm, tmp_path, *bad))
        assert "must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--only", "nothing*"], "--only nothing* matches no setting of these suites (N2-b2)"),
        (
            ["--scheduler-option", "clip_sampel=true"],
            "no config entry 'clip_sampel' (did you mean clip_sample?)",
        ),
        (["--scheduler-option", "clip_sample=yes"], "clip_sample=yes: the value must be JSON"),
        (["--prompts", "builtin"], "takes no --prompts or --guidance-scale"),
        (["--guidance-scale", "3"], "takes no --prompts or --guidance-scale"),
    ],
)
def test_input_it_would_ignore_is_refused_before_sampling(ddpm, tmp_path, capsys, extra, message):
    """Issue 31: each of these ran, ignored (a mistyped option, an --only that matches nothing ran the
    baseline alone, prompts for an unconditional model), or failed late with a JSON parser's text."""
    out = tmp_path / "out"
    assert script.main(args(ddpm, out, "--suites", "interval", "--intervals", "2", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not list(out.glob("*/samples_*"))


def test_a_scheduler_option_reaches_the_scheduler_and_its_record(ddpm, tmp_path):
    out = tmp_path / "out"
    options = ["--scheduler-option", "timestep_spacing=trailing", "clip_sample=false"]
    assert script.main(args(ddpm, out, "--suites", "interval", "--intervals", "2", *options)) == 0
    record = json.loads((out / "sampler.json").read_text())
    assert record["timestep_spacing"] == "trailing" and record["clip_sample"] is False


def test_two_processes_write_the_files_of_one(ddpm, tmp_path):
    common = ["--intervals", "2", "--repeats", "0", "--samples", "5", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    launched = [*torchrun, str(ROOT / "scripts" / "sweep.py"), *args(ddpm, tmp_path / "two", *common)]
    subprocess.run(launched, check=True, env=env, capture_output=True, timeout=600)
    assert script.main(args(ddpm, tmp_path / "one", *common)) == 0
    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert len(one) == 2 * 3 and one == two  # baseline and N2, shards at seeds 0, 2, 4
    assert pd.read_csv(tmp_path / "two" / "results.csv").equals(pd.read_csv(tmp_path / "one" / "results.csv"))


def test_fidelity_to_the_baseline_and_to_the_converged_solution_with_intervals(tmp_path, capsys):
    """Issue 26: trailing spacing, per-row fidelity with intervals, the converged reference from the same
    noise in a folder of its own (with its gap to a finer solve), and the spacing in the CSV, whose rows
    another spacing may not mix with."""
    tiny = [
        "--model_type",
        "tiny-sd",
        "--steps",
        "4",
        "--samples",
        "4",
        "--shard",
        "2",
        "--suites",
        "interval",
    ]
    tiny += ["--intervals", "2"]
    tiny += ["--repeats", "0", "--out", str(tmp_path), "--fidelity-images", "3", "--converged-steps", "12"]
    assert script.main([*tiny, "--timestep-spacing", "trailing"]) == 0
    rows = pd.read_csv(tmp_path / "results.csv").set_index("setting")
    assert (rows.spacing == "trailing").all() and (rows.fidelity_images == 3).all()
    cached, base = rows.loc["N2-b1"], rows.loc["plms-4"]
    assert base.psnr_db == np.inf and cached.psnr_db_lo <= cached.psnr_db <= cached.psnr_db_hi < np.inf
    for r in (base, cached):
        assert 0 < r.psnr_conv_db_lo <= r.psnr_conv_db <= r.psnr_conv_db_hi < 60  # PLMS 4: about 10 dB
        assert (
            r.converged.startswith("DPM-Solver++ 2M, trailing, 12 steps (")
            and "dB to 24 steps" in r.converged
        )
    reference = tmp_path / "converged-dpmpp2m-trailing"
    assert sorted(p.name for p in (reference / "dpmpp2m-trailing-12").glob("samples_*")) == [
        "samples_000000.npy",
        "samples_000002.npy",
    ]
    assert json.loads((reference / "sampler.json").read_text())["timestep_spacing"] == "trailing"
    assert script.main(tiny) == 2  # leading into the same folder: the samples refuse
    assert "holds samples of another sampler (timestep_spacing: trailing there" in capsys.readouterr().err
    elsewhere = ["--out", str(tmp_path / "leading"), "--results", str(tmp_path / "results.csv")]
    assert script.main([*tiny, *elsewhere]) == 2  # into the same CSV: its rows refuse
    assert (
        "holds rows of another sampler (plms-4: spacing trailing there, leading here)"
        in capsys.readouterr().err
    )


def test_following_timesteps_is_a_sampler_of_its_own(ddpm, tmp_path, capsys):
    """--follow-timesteps: 6 trailing steps of 1000 are 166 or 167 apart, so its samples differ from
    diffusers' stride; the CSV's stepping column and the folder's sampler.json keep the two apart, and
    DDIM rows from before the column was kept count as stride."""
    run = lambda out, *extra: script.main(  # noqa: E731
        args(ddpm, tmp_path / out, "--suites", "interval", "--intervals", "2", "--repeats", "0",
             "--timestep-spacing", "trailing", *extra)
    )  # fmt: skip
    assert run("follow", "--follow-timesteps") == 0 and run("stride") == 0
    follow, stride = (pd.read_csv(tmp_path / out / "results.csv") for out in ("follow", "stride"))
    assert set(follow.stepping) == {"follow"} and set(stride.stepping) == {"stride"}
    assert files(tmp_path / "follow").keys() == files(tmp_path / "stride").keys()
    assert files(tmp_path / "follow") != files(tmp_path / "stride")
    assert run("follow") == 2
    assert "holds samples of another sampler (stepping: follow there, stride here)" in capsys.readouterr().err
    old = tmp_path / "old.csv"  # the stride rows as an older release wrote them
    old.write_text(stride.drop(columns="stepping").to_csv(index=False))
    assert run("elsewhere", "--follow-timesteps", "--results", str(old)) == 2
    assert (
        "holds rows of another sampler (ddim-6: stepping stride there, follow here)"
        in capsys.readouterr().err
    )
    assert run("stride", "--results", str(old)) == 0
    meta = tmp_path / "stride" / "sampler.json"  # and its samples' folder
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "_stepping"}))
    assert run("stride", "--follow-timesteps", "--results", str(tmp_path / "new.csv")) == 2
    assert "holds samples of another sampler (stepping: stride there, follow here)" in capsys.readouterr().err
