"""experiments/ldm/sample_ldm.py end to end (issue 16) on a tiny random model of the cin256-v2 family
saved as a latent-diffusion checkpoint: ADM-format samples by seed, resumable shards, two processes
writing what one writes, DeepCache through the CompVis DDIM sampler, clear errors."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ldm.modules.diffusionmodules.openaimodel", reason="stable-diffusion-sdkit not installed")
from omegaconf import OmegaConf  # noqa: E402

from cachediff.compvis import TINY, LatentDiffusion, randomised  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "ldm" / "sample_ldm.py"
_spec = importlib.util.spec_from_file_location("sample_ldm", SCRIPT)
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)

#: cin256-v2's model.params with every part shrunk: 16 x 16 x 3 latents decoded to 32 x 32 images.
TINY_PARAMS = OmegaConf.to_container(OmegaConf.load(ROOT / "experiments/ldm/cin256-v2.yaml").model.params)
TINY_PARAMS["image_size"] = 16
TINY_PARAMS["unet_config"]["params"] = TINY["cin256-v2"]
TINY_PARAMS["first_stage_config"]["params"].update(n_embed=16)
TINY_PARAMS["first_stage_config"]["params"]["ddconfig"].update(
    resolution=32, ch=32, ch_mult=[1, 2], num_res_blocks=1
)
TINY_PARAMS["cond_stage_config"]["params"]["embed_dim"] = TINY["cin256-v2"]["context_dim"]


@pytest.fixture(scope="module")
def tiny_ldm(tmp_path_factory) -> tuple[Path, Path]:
    """A YAML and a checkpoint in latent-diffusion's format (``{"state_dict": ...}``, with keys
    sampling does not use, as the released one has)."""
    folder = tmp_path_factory.mktemp("ldm")
    torch.manual_seed(0)
    model = randomised(LatentDiffusion(TINY_PARAMS), std=0.05)
    state = dict(model.state_dict(), betas=model.betas)
    state["first_stage_model.encoder.conv_in.weight"] = torch.zeros(1)
    torch.save({"state_dict": state, "global_step": 0}, folder / "model.ckpt")
    OmegaConf.save({"model": {"params": TINY_PARAMS}}, folder / "tiny.yaml")
    return folder / "tiny.yaml", folder / "model.ckpt"


def args(tiny_ldm, out: Path, *extra: str) -> list[str]:
    config, ckpt = tiny_ldm
    common = ["--config", str(config), "--ckpt", str(ckpt), "--out", str(out), "--steps", "8", "--batch", "2"]
    return [*common, "--samples", "5", "--shard", "2", "--threads", "1", *extra]


def test_samples_by_seed_in_the_adm_format_resumable(tiny_ldm, tmp_path):
    assert script.main(args(tiny_ldm, tmp_path, "--interval", "3")) == 0
    folder = tmp_path / "s8-N3-b0"
    npz = np.load(folder / "samples_5x32x32x3.npz")
    images, labels = npz["arr_0"], npz["arr_1"]
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8 and images.std() > 0
    assert labels.shape == (5,) and labels.min() >= 0 and labels.max() < 1000
    record = json.loads((folder / "run.json").read_text())
    assert record["full_steps"] == 3 and record["mac_speedup"] > 1.5 and record["images_per_second"] > 0
    assert record["pattern"] == "FCCFCCFC"  # the sampler's 8 steps, followed

    shards = sorted(folder.glob("shard_*.npz"))
    assert [p.name for p in shards] == ["shard_000000.npz", "shard_000002.npz", "shard_000004.npz"]
    kept = shards[0].stat().st_mtime_ns
    shards[1].unlink()
    assert script.main(args(tiny_ldm, tmp_path, "--interval", "3")) == 0  # resumes: one shard again
    assert shards[0].stat().st_mtime_ns == kept and shards[1].exists()
    assert np.array_equal(np.load(folder / "samples_5x32x32x3.npz")["arr_0"], images)

    assert script.main(args(tiny_ldm, tmp_path / "three", "--interval", "3", "--samples", "3")) == 0
    first = np.load(tmp_path / "three" / "s8-N3-b0" / "samples_3x32x32x3.npz")
    assert np.array_equal(first["arr_0"], images[:3]) and np.array_equal(first["arr_1"], labels[:3])

    assert script.main(args(tiny_ldm, tmp_path, "--interval", "3", "--samples", "6")) == 0  # the short
    six = np.load(folder / "samples_6x32x32x3.npz")["arr_0"]  # last shard (seed 4 alone) is made again
    assert len(six) == 6 and np.array_equal(six[:5], images)


def test_a_folder_made_with_other_options_is_refused(tiny_ldm, tmp_path, capsys):
    assert script.main(args(tiny_ldm, tmp_path, "--interval", "3", "--samples", "2")) == 0
    assert script.main(args(tiny_ldm, tmp_path, "--interval", "3", "--samples", "2", "--scale", "3")) == 2
    assert "holds shards made with other scale (scale=1.5): give another --out" in capsys.readouterr().err


def test_interval_1_is_the_uncached_sampler_and_deepcache_follows_its_steps(tiny_ldm, tmp_path):
    model = script.load_ldm(*map(str, tiny_ldm))
    from ldm.models.diffusion.ddim import DDIMSampler

    sampler, run = DDIMSampler(model), script.parse_args(args(tiny_ldm, tmp_path, "--samples", "2"))
    with torch.no_grad():
        base, _ = script.latents(model, sampler, None, [0, 1], run)
        for interval, pattern in ((1, "FFFFFFFF"), (3, "FCCFCCFC")):
            engine = script.cachediff.engine_for(
                model.model.diffusion_model, script.DeepCacheConfig(interval)
            )
            with engine:
                z, _ = script.latents(model, sampler, engine, [0, 1], run)
            assert engine.stats.pattern == pattern
            assert torch.equal(z, base) == (interval == 1)
    assert script.main(args(tiny_ldm, tmp_path, "--samples", "2")) == 0  # the script's uncached images
    images = np.load(tmp_path / "ddim8" / "samples_2x32x32x3.npz")["arr_0"]
    assert np.array_equal(images, script.sample(model, sampler, None, [0, 1], run)[0])


def test_two_processes_write_what_one_writes(tiny_ldm, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    subprocess.run([*torchrun, str(SCRIPT), *args(tiny_ldm, tmp_path / "two", "--interval", "3")],
                   check=True, env=env, capture_output=True, timeout=600)  # fmt: skip
    assert script.main(args(tiny_ldm, tmp_path / "one", "--interval", "3")) == 0
    one, two = (np.load(tmp_path / d / "s8-N3-b0" / "samples_5x32x32x3.npz") for d in ("one", "two"))
    assert np.array_equal(one["arr_0"], two["arr_0"]) and np.array_equal(one["arr_1"], two["arr_1"])


def test_bad_input_is_a_clear_error(tiny_ldm, tmp_path, capsys):
    config, _ = tiny_ldm
    assert script.main(args(tiny_ldm, tmp_path, "--ckpt", str(tmp_path / "none.ckpt"))) == 2
    assert "no such file" in capsys.readouterr().err
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.out.2.weight": torch.zeros(1)}}, other)
    assert script.main(args(tiny_ldm, tmp_path, "--ckpt", str(other))) == 2
    assert "does not fit" in capsys.readouterr().err
    torch.save({"state_dict": {}}, other)
    assert script.main(args(tiny_ldm, tmp_path, "--ckpt", str(other))) == 2
    assert "lacks" in capsys.readouterr().err
    for bad in (["--interval", "0"], ["--shard", "0"], ["--branch", "-1"]):
        with pytest.raises(SystemExit):
            script.parse_args(args(tiny_ldm, tmp_path, *bad))
    assert script.main(args(tiny_ldm, tmp_path, "--interval", "3", "--branch", "99")) == 2
    assert "branch must be an integer in 0.." in capsys.readouterr().err
    # issue 31: an IndexError, an omegaconf traceback and "range() arg 3 must not be zero" before
    for text in ("a,b\n1,2\n", "not a checkpoint"):
        (tmp_path / "notes.ckpt").write_text(text)
        assert script.main(args(tiny_ldm, tmp_path, "--ckpt", str(tmp_path / "notes.ckpt"))) == 2
        err = capsys.readouterr().err
        assert "is not a PyTorch checkpoint" in err and "trust" not in err
    (tmp_path / "bare.yaml").write_text("model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n")
    assert script.main(args(tiny_ldm, tmp_path, "--config", str(tmp_path / "bare.yaml"))) == 2
    assert "has no model.params section" in capsys.readouterr().err
    assert script.main(args(tiny_ldm, tmp_path, "--steps", "1001")) == 2
    assert "1001 DDIM steps: the model has 1000 timesteps, so give 1..1000 steps" in capsys.readouterr().err
    assert not list(tmp_path.glob("*/shard_*"))


def test_bfloat16_runs_under_autocast(tiny_ldm, tmp_path):
    assert (
        script.main(args(tiny_ldm, tmp_path, "--interval", "3", "--samples", "2", "--dtype", "bfloat16")) == 0
    )
    assert script.main(args(tiny_ldm, tmp_path / "fp32", "--interval", "3", "--samples", "2")) == 0
    half, full = (
        np.load(d / "s8-N3-b0" / "samples_2x32x32x3.npz")["arr_0"] for d in (tmp_path, tmp_path / "fp32")
    )
    assert half.shape == full.shape and np.abs(half.astype(int) - full.astype(int)).mean() < 8


def test_the_throughput_survives_reruns_and_resumes(tiny_ldm, tmp_path, capsys):
    """Each shard keeps its own timing, so a rerun of a finished setting or a resume (also by
    another process) reports the throughput of every shard (issue 31: it wrote null, or timed only
    the last process's shards)."""
    run = args(tiny_ldm, tmp_path, "--interval", "3")
    folder = tmp_path / "s8-N3-b0"
    assert script.main(run) == 0
    first = json.loads((folder / "run.json").read_text())
    assert first["images_timed"] == 5 and first["images_per_second"] > 0
    assert script.main(run) == 0  # nothing left to make
    again = json.loads((folder / "run.json").read_text())
    assert (again["images_per_second"], again["images_timed"]) == (first["images_per_second"], 5)
    assert again["pattern"] == "FCCFCCFC"
    (folder / "shard_000002.npz").unlink()
    capsys.readouterr()
    assert script.main(run) == 0
    resumed = json.loads((folder / "run.json").read_text())
    assert resumed["images_timed"] == 5 and resumed["images_per_second"] > 0
    assert "resuming: 2 of 3 shards already made" in capsys.readouterr().err


def test_shards_another_run_holds_are_named_instead_of_a_silent_exit(tiny_ldm, tmp_path, capsys):
    """Issue 31: a second run whose remaining shards another live run had claimed exited 0 without a
    word and without merging."""
    import platform

    run = args(tiny_ldm, tmp_path, "--interval", "3")
    assert script.main(run) == 0
    folder = tmp_path / "s8-N3-b0"
    (folder / "shard_000002.npz").unlink()
    (folder / "samples_5x32x32x3.npz").unlink()
    (folder / ".shard_000002.npz.claim").write_text(f"{platform.node()} 1")  # held by a live process
    capsys.readouterr()
    assert script.main(run) == 0
    assert "1 of 3 shards are still being made by another run (claimed)" in capsys.readouterr().err
    assert not (folder / "samples_5x32x32x3.npz").exists() and not (folder / "shard_000002.npz").exists()
