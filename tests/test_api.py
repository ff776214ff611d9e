"""Public API: the drop-in helper, the context manager, and clear errors for bad input."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import enabled

import cachediff
from cachediff import DeepCacheConfig, DeepCacheSDHelper, branch_plan
from cachediff.testing import sample, tiny_pipe, tiny_unet


@pytest.fixture(scope="module")
def sd():
    pipe, cond = tiny_pipe("sd")
    return pipe, cond, sample(pipe, cond)


def cached_run(pipe, cond, interval=3, branch=0):
    with cachediff.deepcache(pipe, interval=interval, branch=branch):
        return sample(pipe, cond)


def test_helper_has_the_official_api(sd):
    pipe, cond, base = sd
    with enabled(DeepCacheSDHelper(pipe), dict(cache_interval=3, cache_branch_id=0)):
        out = sample(pipe, cond)
    assert torch.equal(out, cached_run(pipe, cond))
    assert torch.equal(sample(pipe, cond), base)


def test_helper_non_uniform_skip_mode_works(sd):
    pipe, cond, _ = sd
    params = dict(cache_interval=3, cache_branch_id=0, skip_mode="non-uniform", center=3, pow=1.2)
    with enabled(DeepCacheSDHelper(pipe), params) as helper:
        sample(pipe, cond, steps=10)
    full = [c.step for c in helper.engine.stats.calls if c.full]
    assert full == list(cachediff.schedule.quadratic_center(10, 4, 3, 1.2))


def test_enable_twice_is_harmless(sd):
    pipe, cond, base = sd
    with enabled(DeepCacheSDHelper(pipe), dict(cache_interval=3, cache_branch_id=2)) as helper:
        n_hooks = len(helper.engine._hooks)
        helper.enable()
        assert len(helper.engine._hooks) == n_hooks
        out = sample(pipe, cond)
    assert torch.equal(out, cached_run(pipe, cond, branch=2))
    assert torch.equal(sample(pipe, cond), base)


def test_set_params_while_enabled_takes_effect(sd):
    pipe, cond, _ = sd
    with enabled(DeepCacheSDHelper(pipe), dict(cache_interval=3, cache_branch_id=0)) as helper:
        helper.set_params(cache_interval=2, cache_branch_id=4)
        out = sample(pipe, cond)
    assert torch.equal(out, cached_run(pipe, cond, interval=2, branch=4))


def test_context_manager_restores_after_an_exception(sd):
    pipe, cond, base = sd
    with pytest.raises(RuntimeError, match="boom"):
        with cachediff.deepcache(pipe, interval=3, branch=0):
            sample(pipe, cond, steps=2)
            raise RuntimeError("boom")
    assert not any("forward" in vars(m) for m in pipe.unet.modules())
    assert torch.equal(sample(pipe, cond), base)


def test_describe_names_branch_producer_and_paper_numbering(sd):
    pipe, _, _ = sd
    engine = cachediff.engine_for(pipe, DeepCacheConfig(branch=1))
    text = engine.describe()
    assert "branch 1 (paper branch 2) of 0..11" in text
    assert "up_blocks.3.attentions.0" in text


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kind,bad,valid", [("sd", 12, "0..11"), ("sdxl", 9, "0..8"), ("svd", 12, "0..11")])
def test_branch_out_of_range_names_the_valid_range(kind, bad, valid):
    unet, _ = tiny_unet(kind)
    with pytest.raises(ValueError, match=rf"branch must be an integer in {valid}"):
        branch_plan(unet, bad)
    with pytest.raises(ValueError, match=valid):
        cachediff.deepcache(unet, interval=3, branch=bad).__enter__()


def test_helper_errors(sd):
    pipe, _, _ = sd
    helper = DeepCacheSDHelper(pipe)
    with pytest.raises(RuntimeError, match="set_params"):
        helper.enable()
    with pytest.raises(ValueError, match="skip_mode must be one of uniform, non-uniform"):
        helper.set_params(cache_interval=3, skip_mode="quad")
    with pytest.raises(ValueError, match="interval must be an integer >= 1"):
        helper.set_params(cache_interval=0)
    with pytest.raises(ValueError, match="no pipeline"):
        DeepCacheSDHelper().enable()


def test_numpy_integers_are_integers(sd):
    """Hardening 12: intervals, branches and centres from numpy (a sweep over ``np.arange``) are
    accepted as the integers they are (before: "interval must be an integer >= 1, got 3"); numpy
    floats and bools are still refused."""
    import numpy as np

    pipe, cond, _ = sd
    with cachediff.deepcache(pipe, interval=3, branch=1) as engine:
        expected = sample(pipe, cond)
    with cachediff.deepcache(pipe, interval=np.int64(3), branch=np.int32(1)) as engine:
        assert torch.equal(sample(pipe, cond), expected) and engine.config.interval == 3
    config = DeepCacheConfig(interval=np.int64(5), schedule="non-uniform", center=np.int64(4))
    assert type(config.interval) is int and type(config.center) is int
    helper = DeepCacheSDHelper(pipe)
    helper.set_params(cache_interval=np.int64(3), cache_branch_id=np.int64(1))
    for bad in (np.float64(3.0), np.bool_(True), True):
        with pytest.raises(ValueError, match="interval must be an integer"):
            DeepCacheConfig(interval=bad)


def test_the_old_names_of_the_run_counts_still_work_with_a_warning(sd):
    """Issue 31: ``RunStats.full_steps`` vanished in a rename and broke a user's code."""
    pipe, cond, _ = sd
    with cachediff.deepcache(pipe, interval=3, branch=1) as engine:
        sample(pipe, cond)
    stats = engine.stats
    with pytest.warns(DeprecationWarning, match="now n_full"):
        assert stats.full_steps == stats.n_full == stats.pattern.count("F") > 0
    with pytest.warns(DeprecationWarning, match="now n_cached"):
        assert stats.cached_steps == stats.n_cached == stats.pattern.count("C") > 0


def test_the_latent_upscalers_u_net_is_refused_by_name():
    from diffusers import UNet2DConditionModel

    upscaler = UNet2DConditionModel(  # diffusers' own test configuration of sd-x2-latent-upscaler
        act_fn="gelu", attention_head_dim=8, norm_num_groups=None, block_out_channels=[32, 32, 64, 64],
        time_cond_proj_dim=160, conv_in_kernel=1, conv_out_kernel=1, cross_attention_dim=32,
        down_block_types=("KDownBlock2D",) + ("KCrossAttnDownBlock2D",) * 3, in_channels=8,
        mid_block_type=None, only_cross_attention=False, out_channels=5,
        resnet_time_scale_shift="scale_shift",
        time_embedding_type="fourier", timestep_post_act="gelu",
        up_block_types=("KCrossAttnUpBlock2D",) * 3 + ("KUpBlock2D",),
    )  # fmt: skip
    with pytest.raises(TypeError, match=r"StableDiffusionLatentUpscalePipeline.* is not supported.*: SD 1.x"):
        cachediff.deepcache(upscaler, interval=3).__enter__()
    assert "forward" not in vars(upscaler)


def test_pipeline_without_unet_is_rejected():
    from diffusers import Transformer2DModel

    dit = Transformer2DModel(  # a DiT
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        sample_size=8,
        patch_size=2,
        norm_type="ada_norm_zero",
        num_embeds_ada_norm=1000,
    )
    with pytest.raises(TypeError, match="has no .unet"):
        DeepCacheSDHelper(SimpleNamespace(transformer=dit, scheduler=None)).set_params(cache_interval=3)
    with pytest.raises(
        TypeError, match="does not support Transformer2DModel; supported U-Nets: UNet2DConditionModel"
    ):
        cachediff.deepcache(dit).__enter__()
    with pytest.raises(TypeError, match="expected a diffusers pipeline"):
        cachediff.engine_for("not a model")


def test_a_second_engine_on_the_same_unet_is_refused(sd):
    pipe, cond, base = sd
    with cachediff.deepcache(pipe, interval=3, branch=0):
        with pytest.raises(RuntimeError, match="already accelerated"):
            cachediff.deepcache(pipe, interval=2, branch=1).__enter__()
    with cachediff.deepcache(pipe, interval=2, branch=1):  # fine once the first is disabled
        sample(pipe, cond, steps=2)
    assert torch.equal(sample(pipe, cond), base)


def _score_sde_pipe():
    from diffusers import ScoreSdeVePipeline, ScoreSdeVeScheduler

    pipe = ScoreSdeVePipeline(unet=tiny_unet("ddpm")[0], scheduler=ScoreSdeVeScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _score_sde_images(pipe) -> torch.Tensor:
    out = pipe(num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np")
    return torch.from_numpy(out.images)


def test_a_predictor_corrector_sampler_counts_its_predictor_steps():
    pipe = _score_sde_pipe()  # ScoreSdeVeScheduler: step_correct, then step_pred; no step
    base = _score_sde_images(pipe)
    with cachediff.deepcache(pipe, interval=1):
        assert torch.equal(_score_sde_images(pipe), base)
    with cachediff.deepcache(pipe, interval=2) as engine:
        _score_sde_images(pipe)
    assert engine.stats.pattern == "FFCCFFCC"  # corrector and predictor calls: two slots per step
    assert not {"step_pred", "set_timesteps"} & set(vars(pipe.scheduler)) and "forward" not in vars(pipe.unet)


class _Stepless:
    """A scheduler with ``set_timesteps`` and no method that ends a step."""

    timesteps = None

    def set_timesteps(self, n):
        pass


def test_a_scheduler_without_steps_is_refused_and_nothing_is_left_hooked():
    pipe = _score_sde_pipe()
    pipe.scheduler = _Stepless()
    with pytest.raises(TypeError, match="_Stepless has no method that ends a denoising step"):
        cachediff.deepcache(pipe, interval=2).__enter__()
    assert not any("forward" in vars(m) for m in pipe.unet.modules()) and not vars(pipe.scheduler)
    pipe.scheduler = _score_sde_pipe().scheduler
    with cachediff.deepcache(pipe, interval=2):  # the failed enable left no owner behind
        _score_sde_images(pipe)


def test_leaving_the_context_leaves_text_to_video_zero_sdxl_as_it_was(tmp_path):
    from diffusers import TextToVideoZeroSDXLPipeline
    from helpers import save_tiny_pipeline

    pipe = TextToVideoZeroSDXLPipeline.from_pretrained(save_tiny_pipeline("sdxl", tmp_path / "sdxl"))
    pipe.set_progress_bar_config(disable=True)

    def video():
        kw = dict(video_length=2, num_inference_steps=6, height=32, width=32, t0=1, t1=3)
        return pipe("a fox", generator=torch.Generator().manual_seed(0), output_type="pt", **kw).images

    base = video()
    for _ in range(2):  # the pipeline swaps in a deep copy of its scheduler in each call
        with cachediff.deepcache(pipe, interval=1):
            assert torch.equal(video(), base)
        assert not {"set_timesteps", "step"} & set(vars(pipe.scheduler))
        assert not any("forward" in vars(m) for m in pipe.unet.modules())


def test_a_forward_hook_on_a_skipped_module_makes_calls_full_until_it_is_removed(sd):
    pipe, cond, base = sd
    with cachediff.deepcache(pipe, interval=3) as engine:
        cached = sample(pipe, cond)
        seen = []
        handle = pipe.unet.mid_block.register_forward_hook(lambda m, i, o: seen.append(1))
        with pytest.warns(UserWarning, match="mid_block carries a forward hook"):
            hooked = sample(pipe, cond)
        assert engine.stats.pattern == "F" * 10 and len(seen) == 10
        handle.remove()
        assert torch.equal(sample(pipe, cond), cached) and engine.stats.pattern == "FCCFCCFCCF"
    assert torch.equal(hooked, base) and not torch.equal(cached, base)


def test_self_attention_guidance_reads_a_current_map_on_every_step(tmp_path):
    from diffusers import StableDiffusionSAGPipeline
    from helpers import save_tiny_pipeline

    pipe = StableDiffusionSAGPipeline.from_pretrained(save_tiny_pipeline("sd", tmp_path / "sd"))
    pipe.set_progress_bar_config(disable=True)

    def image():
        kw = dict(num_inference_steps=4, height=32, width=32, sag_scale=0.75, output_type="pt")
        return pipe("a fox", generator=torch.Generator().manual_seed(0), **kw).images

    base = image()
    with cachediff.deepcache(pipe, interval=3) as engine:  # crashed: the map's shape was stale
        with pytest.warns(UserWarning, match="carries a forward hook"):
            assert torch.equal(image(), base)
    assert set(engine.stats.pattern) == {"F"}


def test_two_threads_on_one_cached_pipeline_never_mix_their_runs(sd):
    """Hardening 6: thread B runs the whole pipeline while thread A is inside its U-Net call of step
    2 (B's run starts with its own set_timesteps). B's run is the accelerated one and equals its
    single-threaded output; A's step 2 still reads its own kept feature, and its later calls run as
    the original model: A equals an explicit run cached at steps 1 and 2 only. (Before: B's calls
    overwrote A's call in progress and the run's state, crashing with KeyError or mixing features.)"""
    import threading

    pipe, cond, _ = sd
    steps, calls, out = 8, [], {}
    alone_b = None
    with cachediff.deepcache(pipe, interval=3, branch=1):
        alone_b = sample(pipe, cond, steps=steps, seed=1)
    with cachediff.deepcache(pipe, schedule="explicit", full_steps=(0, 3, 4, 5, 6, 7), branch=1):
        expected_a = sample(pipe, cond, steps=steps, seed=0)

    conv_in = pipe.unet.conv_in
    original = conv_in.forward

    def conv_in_forward(x):  # inside A's U-Net call of step 2: all of B's run, in another thread
        calls.append(threading.current_thread().name)
        if calls.count("A") == 3 and "B" not in calls:
            b = threading.Thread(
                target=lambda: out.update(B=sample(pipe, cond, steps=steps, seed=1)), name="B"
            )
            b.start()
            b.join()
        return original(x)

    conv_in.forward = conv_in_forward
    try:
        with cachediff.deepcache(pipe, interval=3, branch=1) as engine:
            a = threading.Thread(
                target=lambda: out.update(A=sample(pipe, cond, steps=steps, seed=0)), name="A"
            )
            a.start()
            a.join()
            assert engine.stats.pattern == "FCCFCCFC"  # the run of the last set_timesteps: B's
    finally:
        del conv_in.forward
    assert set(out) == {"A", "B"}, "a thread raised"
    assert torch.equal(out["B"], alone_b)
    assert torch.equal(out["A"], expected_a)


def test_two_threads_calling_a_cached_pipeline_at_once_both_finish():
    """Free-running threads (no ordering imposed) on one cached pipeline: every run finishes, with
    finite outputs, and the pipeline is left as it was (no crash as ``KeyError: 'up_blocks.0'``)."""
    import threading

    pipe, cond = tiny_pipe("sd")
    out, errors = {}, []

    def run(seed):
        try:
            for _ in range(3):
                out[seed] = sample(pipe, cond, steps=6, seed=seed)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(repr(err))

    with cachediff.deepcache(pipe, interval=3, branch=1):
        threads = [threading.Thread(target=run, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and len(out) == 3 and all(torch.isfinite(o).all() for o in out.values())
    assert "forward" not in vars(pipe.unet)


def test_a_cached_call_runs_exactly_the_shallow_attention_layers():
    """The cut of SD's U-Net at layer granularity names attention layers too (``UNetSpec.layer_lists``):
    at branch 1 (paper branch 2) a cached call runs layer 0 of the first down block (which makes skip
    1) and the last two layers of the last up block (which consume skips 1 and 0), so of the attention
    layers only theirs (literals read off the architecture, not from the engine)."""
    unet, cond = tiny_unet("sd")
    x, ran = torch.randn(2, unet.config.in_channels, 8, 8), []
    # a skipped module is still called (its wrapper hands out the kept result): watch what it calls
    names = {m: n.removesuffix(".proj_in") for n, m in unet.named_modules() if n.endswith("proj_in")}

    def record(module, args, out):  # returns None: the output stays
        if module in names:
            ran.append(names[module])

    engine = cachediff.DeepCacheEngine(unet, DeepCacheConfig(interval=2, branch=1))
    with torch.no_grad(), engine:
        unet(x, 999, **cond)  # full
        handle = torch.nn.modules.module.register_module_forward_hook(record)  # global: caching stays on
        try:
            unet(x, 998, **cond)  # cached
        finally:
            handle.remove()
    assert engine.stats.pattern == "FC"
    assert sorted(ran) == [
        "down_blocks.0.attentions.0",
        "up_blocks.3.attentions.1",
        "up_blocks.3.attentions.2",
    ]
