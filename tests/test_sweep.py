"""Sweeps: samples addressable by seed, resumption after an interruption, atomic CSV."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler

from cachediff import DeepCacheConfig
from cachediff.files import read_csv, write_csv
from cachediff.rows import Setting
from cachediff.rows import params as sweep_params
from cachediff.sweep import Sweep, unit_range
from cachediff.testing import tiny_unet


@pytest.fixture
def pipe():
    unet, _ = tiny_unet("ddpm")
    return DDIMPipeline(unet=unet, scheduler=DDIMScheduler())


def mean_features(images: torch.Tensor) -> np.ndarray:
    return images.flatten(1).mean(1, keepdim=True).double().numpy()


SETTING = Setting("N3-b1", steps=6, cache=DeepCacheConfig(interval=3, branch=1))


def test_samples_do_not_depend_on_the_shard_or_batch_size(pipe, tmp_path):
    a = Sweep(pipe, tmp_path / "a", n_samples=4, shard=2, featurize=mean_features)
    b = Sweep(pipe, tmp_path / "b", n_samples=4, shard=4, featurize=mean_features)
    c = Sweep(pipe, tmp_path / "c", n_samples=4, shard=4, featurize=mean_features, batch=3)
    for sweep in (a, b, c):
        sweep.features(SETTING, progress=False)
    assert np.array_equal(a.samples(SETTING), b.samples(SETTING))
    assert np.array_equal(a.samples(SETTING), c.samples(SETTING))
    assert [r["images"] for r in c._records(SETTING)] == [3, 1]  # one record per pipeline call
    assert c.mean_n_full(SETTING) == 2 and c.macs_per_image(SETTING) == b.macs_per_image(SETTING)


def test_per_phase_cuts_count_each_cached_step_at_its_cut(pipe, tmp_path):
    """6 steps, N = 3, branch 1 then, from step 3, branch 0: full 0, 3; cached 1, 2 at branch 1 and 4, 5
    at branch 0; the samples are made by the phased engine (they differ from branch 1 alone)."""
    sweep = Sweep(pipe, tmp_path, n_samples=1, shard=1)
    phased = Setting("N3-b1-late0", 6, DeepCacheConfig(interval=3, branch=1, phases=((3, 0),)))
    (full, at_1), (_, at_0) = sweep.call_macs(phased), sweep.call_macs(phased, branch=0)
    assert full > at_1 > at_0
    assert sweep.macs_per_image(phased) == 2 * full + 2 * at_1 + 2 * at_0
    assert not torch.equal(sweep.generate(phased, [0]), sweep.generate(SETTING, [0]))
    # a recorded run one step longer than asked (PLMS): its last cached step cuts at branch 0 too
    (tmp_path / phased.name).mkdir(exist_ok=True)
    (tmp_path / phased.name / "stats_000000.json").write_text('{"pattern": "FCCFCCC", "images": 1}')
    assert sweep.macs_per_image(phased) == 2 * full + 2 * at_1 + 3 * at_0


def test_a_resumed_setting_says_so(pipe, tmp_path, capsys):
    sweep = Sweep(pipe, tmp_path, n_samples=6, shard=2)
    sweep.generate_missing(SETTING)
    assert "resuming" not in capsys.readouterr().out
    (tmp_path / SETTING.name / "samples_000002.npy").unlink()
    sweep.generate_missing(SETTING)
    assert "N3-b1: resuming, 2 of 3 shards already made" in capsys.readouterr().out


def test_an_interrupted_sweep_resumes_without_redoing_work(pipe, tmp_path, monkeypatch):
    sweep = Sweep(pipe, tmp_path, n_samples=6, shard=2, featurize=mean_features)
    generated, original = [], sweep.run

    def interrupted_at_the_second_shard(setting, seeds):
        generated.append(list(seeds))
        if len(generated) == 2:
            raise KeyboardInterrupt
        return original(setting, seeds)

    monkeypatch.setattr(sweep, "run", interrupted_at_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        sweep.features(SETTING, progress=False)
    featurised = []
    sweep.featurize = lambda images: featurised.append(len(images)) or mean_features(images)
    resumed = sweep.features(SETTING, progress=False)
    assert generated == [[0, 1], [2, 3], [2, 3], [4, 5]]  # shard 0 was kept
    assert sweep.features(SETTING, progress=False).shape == (6, 1) and featurised == [2, 2, 2]  # once each
    fresh = Sweep(pipe, tmp_path / "fresh", n_samples=6, shard=2, featurize=mean_features)
    assert np.array_equal(resumed, fresh.features(SETTING, progress=False))


def test_processes_share_the_shards_and_match_one_process(pipe, tmp_path):
    one = Sweep(pipe, tmp_path / "one", n_samples=5, shard=2, featurize=mean_features)
    two = Sweep(pipe, tmp_path / "two", n_samples=5, shard=2, featurize=mean_features)
    assert [list(two.starts(r, 2)) for r in (0, 1)] == [[0, 4], [2]]
    for rank in (1, 0):  # as two processes would, in either order
        two.generate_missing(SETTING, rank, 2, progress=False)
    one.generate_missing(SETTING, progress=False)
    files = [sorted((tmp_path / name).rglob("*.npy")) for name in ("one", "two")]
    assert len(files[0]) == len(files[1]) == 3
    for a, b in zip(*files, strict=True):
        assert a.name == b.name and a.read_bytes() == b.read_bytes()


def test_a_setting_name_cannot_be_reused_with_other_parameters(pipe, tmp_path):
    sweep = Sweep(pipe, tmp_path, n_samples=2, shard=2, featurize=mean_features)
    sweep.features(SETTING, progress=False)
    with pytest.raises(ValueError, match="other parameters"):
        sweep.features(Setting("N3-b1", steps=6, cache=DeepCacheConfig(interval=3, branch=2)), progress=False)


def test_folders_recorded_before_a_config_field_existed_still_resume(pipe, tmp_path):
    """A setting.json without ``phases`` and ``refresh`` (written before the fields existed) matches the
    setting; a phased setting of the same name does not, nor one that keeps full steps' features only."""
    sweep = Sweep(pipe, tmp_path, n_samples=2, shard=2)
    meta = sweep.folder(SETTING) / "setting.json"
    assert "phases" not in meta.read_text() and "refresh" not in meta.read_text()
    sweep.folder(SETTING)  # matches
    phased = Setting("N3-b1-late0", 6, DeepCacheConfig(interval=3, branch=1, phases=((3, 0),)))
    sweep.folder(phased)
    with pytest.raises(ValueError, match="other parameters"):
        sweep.folder(Setting("N3-b1", 6, DeepCacheConfig(interval=3, branch=1, phases=((3, 0),))))
    with pytest.raises(ValueError, match="other parameters"):
        sweep.folder(dataclasses.replace(phased, cache=dataclasses.replace(phased.cache, refresh=False)))


def test_a_sweep_folder_cannot_mix_samplers(pipe, tmp_path):
    Sweep(pipe, tmp_path, n_samples=2, shard=2)
    Sweep(pipe, tmp_path, n_samples=2, shard=2)  # the same sampler: resumes
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    with pytest.raises(ValueError, match="clip_sample: True there, False here"):
        Sweep(pipe, tmp_path, n_samples=2, shard=2)


def test_a_sweep_folder_cannot_mix_prompt_sets(tmp_path):
    """A lost shard remade from another prompt set would sit beside shards of the first (issue 31)."""
    unet, _ = tiny_unet("ddpm")
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler())
    Sweep(pipe, tmp_path, n_samples=2, shard=2, prompts=["a cat", "a dog"])
    Sweep(pipe, tmp_path, n_samples=2, shard=2, prompts=["a cat", "a dog"])  # the same set: resumes
    with pytest.raises(ValueError, match="another prompt set"):
        Sweep(pipe, tmp_path, n_samples=2, shard=2, prompts=["a cat", "a bird"])
    with pytest.raises(ValueError, match="another prompt set"):
        Sweep(pipe, tmp_path, n_samples=2, shard=2)


def test_an_adaptive_setting_at_interval_1_is_the_uncached_run():
    adaptive = Setting("N1-adaptive", steps=8, cache=DeepCacheConfig(interval=1, schedule="adaptive"))
    assert sweep_params(adaptive)["method"] == "uncached" and adaptive.n_full() == 8


def test_csv_round_trip(tmp_path):
    rows = [dict(setting="a", fid=1.5), dict(setting="b", fid=2.5)]
    write_csv(rows, tmp_path / "r.csv")
    assert read_csv(tmp_path / "r.csv") == rows
    assert read_csv(tmp_path / "missing.csv") == []
    assert not list(tmp_path.glob("*.tmp*"))


def test_full_steps_are_recorded_per_shard_for_adaptive_runs(pipe, tmp_path):
    sweep = Sweep(pipe, tmp_path, n_samples=4, shard=2, featurize=mean_features)
    adaptive = Setting("adaptive", steps=8, cache=DeepCacheConfig(interval=3, schedule="adaptive"))
    sweep.features(adaptive, progress=False)
    records = sorted((tmp_path / "adaptive").glob("stats_*.json"))
    assert len(records) == 2
    assert 1 <= sweep.mean_n_full(adaptive) < 8
    assert sweep.mean_n_full(SETTING) == SETTING.n_full() == 2


def test_adaptive_samples_of_another_batch_size_are_refused(pipe, tmp_path):
    """The adaptive schedule decides per call for the whole batch: shards made at batch 2 and batch 4
    would be samples of two schedules under one name. Static settings do not depend on the batch."""
    adaptive = Setting("adaptive", steps=8, cache=DeepCacheConfig(interval=3, schedule="adaptive"))
    Sweep(pipe, tmp_path, n_samples=4, shard=4, batch=2).generate_missing(adaptive, progress=False)
    Sweep(pipe, tmp_path, n_samples=4, shard=4, batch=2).folder(adaptive)  # the same batch: resumes
    with pytest.raises(ValueError, match="other parameters"):
        Sweep(pipe, tmp_path, n_samples=4, shard=4, batch=4).folder(adaptive)
    Sweep(pipe, tmp_path, n_samples=4, shard=4, batch=2).generate_missing(SETTING, progress=False)
    Sweep(pipe, tmp_path, n_samples=4, shard=4, batch=4).folder(SETTING)  # static: any batch


def test_the_first_images_generate_only_the_shards_that_hold_them(pipe, tmp_path):
    sweep = Sweep(pipe, tmp_path, n_samples=6, shard=2, featurize=mean_features)
    first = sweep.first(SETTING)
    assert [p.name for p in (tmp_path / SETTING.name).glob("samples_*")] == ["samples_000000.npy"]
    three = sweep.first(SETTING, 3)
    assert sorted(p.name for p in (tmp_path / SETTING.name).glob("samples_*")) == [
        "samples_000000.npy",
        "samples_000002.npy",
    ]
    sweep.features(SETTING, progress=False)
    assert len(first) == 2 and torch.equal(first, sweep.images(SETTING)[:2])
    assert len(three) == 3 and torch.equal(three, sweep.images(SETTING)[:3])


def test_files_left_by_a_kill_while_writing_never_block_a_resume(pipe, tmp_path):
    sweep = Sweep(pipe, tmp_path, n_samples=2, shard=2, featurize=mean_features)
    sweep.features(SETTING, progress=False)
    before = sweep.mean_n_full(SETTING)
    folder = tmp_path / SETTING.name
    dead = 2**22 + 12345  # above the default pid_max: no such process
    strays = [folder / f".stats_000002.json.tmp{dead}.json", folder / f"stats_000002.tmp{dead}.json"]
    for stray in strays:  # empty, as a SIGKILL between open and write leaves them (the second: older naming)
        stray.write_text("")
    assert sweep.mean_n_full(SETTING) == before  # not read as records
    Sweep(pipe, tmp_path, n_samples=2, shard=2)  # a resumed sweep clears them
    assert not any(s.exists() for s in strays)
    live = folder / f".stats_000002.json.tmp{os.getpid()}.json"
    live.write_text("")
    Sweep(pipe, tmp_path, n_samples=2, shard=2)
    assert live.exists()  # a running writer's file is left alone
    (folder / "stats_000009.json").write_text("")
    with pytest.raises(ValueError, match="stats_000009.json is not valid JSON"):
        sweep.mean_n_full(SETTING)


def test_two_sweeps_on_one_folder_share_the_shards(pipe, tmp_path, monkeypatch):
    import platform
    import threading

    from cachediff.files import claim, release

    sweep = Sweep(pipe, tmp_path, n_samples=6, shard=2, featurize=mean_features)
    shard = sweep.folder(SETTING) / "samples_000002.npy"
    theirs = np.zeros((2, 3, 8, 8), np.uint8)
    (shard.parent / f".{shard.name}.claim").write_text(f"{platform.node()} {os.getppid()}")  # alive
    generated, original = [], sweep.run
    monkeypatch.setattr(sweep, "run", lambda s, seeds: generated.append(list(seeds)) or original(s, seeds))

    def the_other_sweep_finishes():
        np.save(shard, theirs)
        release(shard)

    timer = threading.Timer(0.3, the_other_sweep_finishes)
    timer.start()
    sweep.generate_missing(SETTING, progress=False, poll=0.05)  # waits for the other's shard
    timer.join()
    assert generated == [[0, 1], [4, 5]] and np.array_equal(np.load(shard), theirs)
    assert claim(shard)  # nothing of this sweep's is left claimed


def test_sweeps_of_other_sample_counts_share_a_folder_seed_for_seed(pipe, tmp_path):
    """A folder written by a sweep of 3 samples (shards of 2: seeds 0-1, 2) serves one of 1 sample and
    one of 4 (whose seed-2 shard the first left short: made again), each reading exactly its seeds."""

    def sweep(folder: str, n: int) -> Sweep:
        return Sweep(pipe, tmp_path / folder, n_samples=n, shard=2, featurize=mean_features)

    fresh = sweep("fresh", 4)
    fresh.generate_missing(SETTING, progress=False)
    expected = fresh.samples(SETTING)
    sweep("shared", 3).features(SETTING, progress=False)
    one = sweep("shared", 1)
    assert one.features(SETTING, progress=False).shape == (1, 1)  # not the shard's 2
    assert np.array_equal(one.samples(SETTING), expected[:1])
    four = sweep("shared", 4)
    features = four.features(SETTING, progress=False)  # remakes the short shard and its features
    assert np.array_equal(four.samples(SETTING), expected)
    assert np.allclose(features, mean_features(unit_range(expected)))


def test_a_folder_of_a_larger_shard_is_refused_before_anything_is_read(pipe, tmp_path):
    Sweep(pipe, tmp_path, n_samples=4, shard=4).generate_missing(SETTING, progress=False)
    small = Sweep(pipe, tmp_path, n_samples=4, shard=2)
    with pytest.raises(ValueError, match=r"holds 4 images, more than a shard of 2: .* --shard 4"):
        small.generate_missing(SETTING, progress=False)
    with pytest.raises(ValueError, match="more than a shard of 2"):
        small.first(SETTING, 2)
