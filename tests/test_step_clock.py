"""Layer 3: which step a U-Net call belongs to. Every evaluation is one step with every scheduler,
keyword and batched timesteps work, consecutive runs start afresh, separate cond/uncond calls keep
separate caches, a changed input shape forces a full step."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from helpers import enabled
from helpers import tiny_baseline as baseline

import cachediff
from cachediff import DeepCacheConfig, DeepCacheEngine
from cachediff.testing import sample, tiny_pipe, tiny_unet

SCHEDULERS = {
    "DDIMScheduler": {},
    "PNDMScheduler": dict(skip_prk_steps=True),  # PLMS: one duplicate timestep
    "HeunDiscreteScheduler": {},  # two evaluations per timestep
    "DPMSolverMultistepScheduler": {},
    "EulerDiscreteScheduler": {},
    "UniPCMultistepScheduler": {},  # its corrector reuses the previous step's output
    "LMSDiscreteScheduler": {},  # needs scipy (a requirement)
}


def pipe_with_scheduler(name):
    import diffusers

    unet, cond = tiny_unet("sd", batch=2)
    return SimpleNamespace(unet=unet, scheduler=getattr(diffusers, name)(**SCHEDULERS[name])), cond


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_unet_evaluation_is_one_step(name):
    pipe, cond = pipe_with_scheduler(name)
    with cachediff.deepcache(pipe, interval=3, branch=0) as engine:
        sample(pipe, cond, steps=6)
        n_eval = len(pipe.scheduler.timesteps)
    assert [c.step for c in engine.stats.calls] == list(range(n_eval))
    assert engine.stats.pattern == "".join("F" if s % 3 == 0 else "C" for s in range(n_eval))


@pytest.mark.parametrize("name", ["PNDMScheduler", "HeunDiscreteScheduler"])
def test_duplicate_timesteps_count_as_separate_steps(name):
    """Counting by scheduler.step equals counting U-Net calls, which a bare U-Net engine does."""
    pipe, cond = pipe_with_scheduler(name)
    with cachediff.deepcache(pipe, interval=3, branch=1):
        ours = sample(pipe, cond, steps=6)
    with DeepCacheEngine(pipe.unet, DeepCacheConfig(interval=3, branch=1)):  # 1 call = 1 step
        reference = sample(pipe, cond, steps=6)
    assert torch.equal(ours, reference)


def test_official_helper_miscounts_plms_steps():
    """The official helper maps PLMS's repeated timestep to the same step index (documented bug)."""
    official = pytest.importorskip("DeepCache")
    pipe, cond = pipe_with_scheduler("PNDMScheduler")
    with enabled(official.DeepCacheSDHelper(pipe), dict(cache_interval=2, cache_branch_id=1)):
        theirs = sample(pipe, cond, steps=6)
    with cachediff.deepcache(pipe, interval=2, branch=1) as engine:
        ours = sample(pipe, cond, steps=6)
    assert engine.stats.pattern == "FCFCFCF"  # theirs: timesteps.index gives steps 0,1,1,3,4,5,6
    assert not torch.equal(ours, theirs)


TIMESTEP_CALLS = {
    "keyword": lambda u, x, t, c: u(sample=x, timestep=t, **c).sample,
    "int": lambda u, x, t, c: u(x, int(t), **c).sample,
    "float": lambda u, x, t, c: u(x, float(t), **c).sample,
    "batched": lambda u, x, t, c: u(x, t.expand(x.shape[0]), **c).sample,
}


@pytest.mark.parametrize("form", TIMESTEP_CALLS)
def test_timestep_forms_all_work(form):
    pipe, cond, _ = baseline("sd")
    with cachediff.deepcache(pipe, interval=3, branch=0):
        positional = sample(pipe, cond)
        other = sample(pipe, cond, call=TIMESTEP_CALLS[form])
    torch.testing.assert_close(other, positional, rtol=0, atol=1e-6)


def test_keyword_timestep_breaks_the_official_helper():
    official = pytest.importorskip("DeepCache")
    pipe, cond = tiny_pipe("sd")  # its own: the official helper leaves instance forwards behind
    with enabled(official.DeepCacheSDHelper(pipe), dict(cache_interval=3, cache_branch_id=0)):
        with pytest.raises(IndexError):
            sample(pipe, cond, call=TIMESTEP_CALLS["keyword"])


def test_consecutive_calls_equal_fresh_runs():
    pipe, cond, _ = baseline("sd")
    with cachediff.deepcache(pipe, interval=3, branch=0) as engine:
        first = sample(pipe, cond, seed=1)
        second = sample(pipe, cond, seed=2)
        assert engine.stats.pattern == "FCCFCCFCCF"
    with cachediff.deepcache(pipe, interval=3, branch=0):
        fresh = sample(pipe, cond, seed=2)
    assert torch.equal(second, fresh) and not torch.equal(first, second)


def test_img2img_with_another_strength_equals_a_fresh_run():
    pipe, cond, _ = baseline("sd")
    with cachediff.deepcache(pipe, interval=3, branch=2):
        sample(pipe, cond, start=2)
        later = sample(pipe, cond, start=5)
    with cachediff.deepcache(pipe, interval=3, branch=2) as engine:
        fresh = sample(pipe, cond, start=5)
    assert torch.equal(later, fresh)
    assert engine.stats.pattern == "FCCFC"


def test_swapping_the_scheduler_starts_a_new_run():
    import diffusers

    pipe, cond, _ = baseline("sd")
    pipe = SimpleNamespace(unet=pipe.unet, scheduler=pipe.scheduler)
    with cachediff.deepcache(pipe, interval=3, branch=0) as engine:
        sample(pipe, cond, steps=4)
        pipe.scheduler = diffusers.EulerDiscreteScheduler()
        sample(pipe, cond, steps=4)
        assert engine.stats.pattern == "FCCF"
    assert "step" not in vars(pipe.scheduler)


def test_separate_cond_and_uncond_passes_keep_separate_caches():
    pipe, cond, _ = baseline("sd")
    uncond_c = {k: v[:1] for k, v in cond.items()}
    text_c = {k: v[1:] for k, v in cond.items()}

    def two_passes(u, x, t, c):  # a pipeline that runs uncond and cond as two U-Net calls per step
        return torch.cat([u(x[:1], t, **uncond_c).sample, u(x[1:], t, **text_c).sample])

    with cachediff.deepcache(pipe, interval=3, branch=1) as engine:
        ours = sample(pipe, cond, call=two_passes)
    assert engine.stats.n_full == 2 * 4

    # Reference: two independent U-Nets, each with its own engine and one call per step.
    u_unet, t_unet = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.unet)
    engines = [DeepCacheEngine(u, DeepCacheConfig(interval=3, branch=1)).enable() for u in (u_unet, t_unet)]

    def two_models(u, x, t, c):
        return torch.cat([u_unet(x[:1], t, **uncond_c).sample, t_unet(x[1:], t, **text_c).sample])

    reference = sample(pipe, cond, call=two_models)
    [e.disable() for e in engines]
    assert torch.equal(ours, reference)


def test_input_shape_change_within_a_run_forces_a_full_step():
    unet, cond = tiny_unet("sd", batch=1)
    with cachediff.deepcache(unet, interval=5, branch=0) as engine:
        unet(torch.randn(1, 4, 8, 8), 900, **cond)
        unet(torch.randn(1, 4, 8, 8), 800, **cond)
        unet(torch.randn(1, 4, 16, 16), 700, **cond)  # e.g. Text2Video-Zero's second loop
        unet(torch.randn(1, 4, 16, 16), 600, **cond)
    assert engine.stats.pattern == "FCFC"


def test_a_step_method_looked_up_before_the_first_call_is_counted():
    """``scheduler.step(unet(...))`` fetches ``step`` before the U-Net runs: the engine must already
    follow the scheduler when it is enabled, not only from its first call on."""
    pipe, cond = tiny_pipe("sd")
    with cachediff.deepcache(pipe, interval=3, branch=1) as engine:
        pipe.scheduler.set_timesteps(7)
        x = torch.randn(2, 4, 8, 8)
        with torch.no_grad():
            for t in pipe.scheduler.timesteps:
                x = pipe.scheduler.step(pipe.unet(x, t, **cond).sample, t, x).prev_sample
        assert [c.step for c in engine.stats.calls] == list(range(7))
        assert engine.stats.pattern == "FCCFCCF"


def test_a_pipeline_sharing_the_unet_never_reuses_the_others_feature(tmp_path):
    """Issue 18.1: txt2img then img2img on one U-Net, img2img with a scheduler of its own: its calls
    lie past the end of the txt2img run, so they run as the original and keep nothing."""
    import diffusers
    from helpers import save_tiny_pipeline

    from cachediff.generation import text2image

    folder = save_tiny_pipeline("sd", tmp_path / "sd")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    i2i = diffusers.StableDiffusionImg2ImgPipeline(**pipe.components)
    i2i.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    for p in (pipe, i2i):
        p.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 16, 16)

    def img2img():
        return text2image(i2i, [0], 5, "a fox", image=image, strength=0.8)

    uncached = img2img()
    with cachediff.deepcache(pipe, interval=3, branch=0) as engine:
        text2image(pipe, [0], 7, "a fox")  # step 7 would be a cached one of its run
        assert engine.stats.pattern == "FCCFCCF"
        got = img2img()
        assert engine.stats.pattern == "FCCFCCF" + "F" * 4  # strength 0.8 of 5 steps: 4 calls, all full
        assert len(engine._slots) == 1  # none opened for the other pipeline's calls
    assert torch.equal(got, uncached)


@pytest.mark.parametrize(
    ("calls", "placed"),
    [
        # Heun-like: the second evaluation at the next step's time, or rounded just past it (ComfyUI's
        # discrete models round a sigma to the nearest of 1000 timesteps: DPM2 ancestral's 832 for 833)
        ((999, 833, 833, 666, 666, 500), ["step 0", "second 0", "step 1", "second 1", "step 2", "second 2"]),
        ((999, 832, 833, 665, 666, 500), ["step 0", "second 0", "step 1", "second 1", "step 2", "second 2"]),
        # a time beyond the step after the next is no further evaluation of the current step
        ((999, 600), ["step 0", None]),
        # above the step's own time (a raised sigma_hat) fits nowhere
        ((999, 1000), ["step 0", None]),
    ],
)
def test_a_timed_run_places_further_evaluations_up_to_the_step_after_next(calls, placed):
    from cachediff.clock import TimedRun

    run = TimedRun([999.0, 833.0, 666.0, 500.0], cachediff.sampling.evaluations_of("two"))
    where = []
    for t in calls:
        w = run.place(float(t))
        where.append(w and f"{w} {run.step}")
    assert where == placed


@pytest.mark.parametrize(("unit", "expected"), [("step", [0, 0, 1, 1, 2]), ("evaluation", [0, 1, 2, 3, 4])])
def test_a_timed_run_counts_steps_or_evaluations(unit, expected):
    """Heun over 3 steps: 5 evaluations, placed in 3 steps, or each its own step (and the run's
    length follows the unit); the slot starts afresh with each step."""
    from cachediff.clock import StepClock

    clock = StepClock()
    clock.follow([999.0, 833.0, 666.0], cachediff.sampling.evaluations_of("two"), unit)
    placed = []
    for t in (999.0, 833.0, 833.0, 666.0, 666.0):
        placed.append(clock.begin(lambda t=t: t))
        clock.end()
    assert placed == [(s, 1 if unit == "step" and i in (1, 3) else 0) for i, s in enumerate(expected)]
    assert clock.num_steps == (3 if unit == "step" else 5)
    with pytest.raises(ValueError, match="unit must be 'step' or 'evaluation'"):
        clock.follow([999.0], cachediff.sampling.evaluations_of("one"), "call")
