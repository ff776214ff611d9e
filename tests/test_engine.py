"""Layer 3: the engine on real diffusers U-Net classes with tiny random weights (CPU, seeded)."""

from __future__ import annotations

import copy
import functools
from types import SimpleNamespace

import pytest
import torch

import cachediff
from cachediff import DeepCacheConfig, DeepCacheEngine, schedule
from cachediff.testing import latent_shape, sample, tiny_pipe, tiny_unet

KINDS = ["sd", "sdxl", "svd", "ddpm"]


@functools.cache
def baseline(kind):
    pipe, cond = tiny_pipe(kind)
    return pipe, cond, sample(pipe, cond)


def count_calls(module):
    """Count real executions of ``module`` (a forward hook fires only when its forward runs)."""
    counter = SimpleNamespace(n=0)
    handle = module.register_forward_hook(lambda *_: setattr(counter, "n", counter.n + 1))
    return counter, handle


@pytest.mark.parametrize("kind", KINDS)
def test_interval_one_equals_baseline_bit_for_bit(kind):
    pipe, cond, base = baseline(kind)
    for branch in (0, 5):
        with cachediff.deepcache(pipe, interval=1, branch=branch):
            assert torch.equal(sample(pipe, cond), base)


@pytest.mark.parametrize("kind", KINDS)
def test_enable_then_disable_restores_the_model(kind):
    pipe, cond, base = baseline(kind)
    engine = cachediff.engine_for(pipe, DeepCacheConfig(interval=3, branch=1)).enable()
    cached = sample(pipe, cond)
    engine.disable()
    assert not torch.equal(cached, base)
    assert torch.equal(sample(pipe, cond), base)
    assert not any("forward" in vars(m) for m in pipe.unet.modules())
    assert "step" not in vars(pipe.scheduler) and "set_timesteps" not in vars(pipe.scheduler)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("interval", [2, 3, 5])
def test_deep_blocks_run_exactly_on_the_schedules_full_steps(kind, interval):
    pipe, cond, _ = baseline(kind)
    mid, h1 = count_calls(pipe.unet.mid_block.resnets[0])
    first_up, h2 = count_calls(pipe.unet.up_blocks[0].resnets[0])
    with cachediff.deepcache(pipe, interval=interval, branch=0) as engine:
        sample(pipe, cond, steps=10)
    h1.remove(), h2.remove()
    n_full = len(schedule.uniform(10, interval))
    assert mid.n == first_up.n == n_full == engine.stats.full_steps
    assert engine.stats.cached_steps == 10 - n_full


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("branch", [0, 3, 8])
def test_cached_step_on_the_same_input_reproduces_the_full_step(kind, branch):
    """With identical inputs every step, reusing the deep feature must change nothing."""
    unet, cond = tiny_unet(kind, batch=1)
    cond.pop("concat", None)
    x = torch.randn(
        latent_shape(unet, 1, frames=2)[:-3] + (unet.config.in_channels,) + latent_shape(unet, 1)[-2:]
    )
    with torch.no_grad():
        full = unet(x, 500, **cond).sample
        with cachediff.deepcache(unet, interval=4, branch=branch) as engine:
            outs = [unet(x, 500, **cond).sample for _ in range(4)]
    assert engine.stats.pattern == "FCCC"
    assert all(torch.equal(o, full) for o in outs)


def test_freeu_in_place_scaling_does_not_corrupt_the_cache():
    """FreeU scales the deep feature in place; the official helper's aliased cache drifts, ours does not."""
    unet, cond = tiny_unet("sd", batch=1)
    unet.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        full = unet(x, 500, **cond).sample
        for branch in (2, 11):  # the cached feature enters a FreeU up block
            with cachediff.deepcache(unet, interval=3, branch=branch):
                outs = [unet(x, 500, **cond).sample for _ in range(3)]
            assert all(torch.equal(o, full) for o in outs), branch


# ----------------------------------------------------------------------------- step accounting
SCHEDULERS = {
    "DDIMScheduler": {},
    "PNDMScheduler": dict(skip_prk_steps=True),  # PLMS: one duplicate timestep
    "HeunDiscreteScheduler": {},  # two evaluations per timestep
    "DPMSolverMultistepScheduler": {},
    "EulerDiscreteScheduler": {},
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
    bare = DeepCacheEngine(pipe.unet, DeepCacheConfig(interval=3, branch=1)).enable()  # 1 call = 1 step
    reference = sample(pipe, cond, steps=6)
    bare.disable()
    assert torch.equal(ours, reference)


def test_official_helper_miscounts_plms_steps():
    """The official helper maps PLMS's repeated timestep to the same step index (documented bug)."""
    official = pytest.importorskip("DeepCache")
    pipe, cond = pipe_with_scheduler("PNDMScheduler")
    helper = official.DeepCacheSDHelper(pipe)
    helper.set_params(cache_interval=2, cache_branch_id=1)
    helper.enable()
    theirs = sample(pipe, cond, steps=6)
    helper.disable()
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
    pipe, cond, _ = baseline("sd")
    helper = official.DeepCacheSDHelper(pipe)
    helper.set_params(cache_interval=3, cache_branch_id=0)
    helper.enable()
    try:
        with pytest.raises(IndexError):
            sample(pipe, cond, call=TIMESTEP_CALLS["keyword"])
    finally:
        helper.disable()


# ----------------------------------------------------------------------------- no stale state
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
    assert engine.stats.full_steps == 2 * 4

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


# ----------------------------------------------------------------------------- adapters
def controlnet_residuals(unet, x, cond):
    """Residuals shaped like a ControlNet's: one per skip tensor, and one for the mid block."""
    shapes = {}
    hooks = [
        b.register_forward_hook(
            lambda m, i, o, k=k: shapes.__setitem__(k, [o[0].shape, *[s.shape for s in o[1]]])
        )
        for k, b in enumerate(unet.down_blocks)
    ]
    with torch.no_grad():
        unet(x, 500, **cond)
    [h.remove() for h in hooks]
    g = torch.Generator().manual_seed(3)
    down = [torch.randn(x.shape[0], unet.config.block_out_channels[0], *x.shape[-2:], generator=g)]
    down += [torch.randn(s, generator=g) for k in sorted(shapes) for s in shapes[k][1:]]
    mid = torch.randn(shapes[len(shapes) - 1][0], generator=g)
    return down, mid


@pytest.mark.parametrize("branch", [0, 4, 11])
def test_controlnet_residuals_work_on_cached_steps(branch):
    official = pytest.importorskip("DeepCache")
    pipe, cond, _ = baseline("sd")
    down, mid = controlnet_residuals(pipe.unet, torch.randn(2, 4, 8, 8), cond)
    cn_cond = dict(cond, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    results = []
    for helper_cls in (official.DeepCacheSDHelper, cachediff.DeepCacheSDHelper):
        helper = helper_cls(pipe)
        helper.set_params(cache_interval=3, cache_branch_id=branch)
        helper.enable()
        results.append(sample(pipe, {**cn_cond}, call=lambda u, x, t, c: u(x, t, **c).sample))
        helper.disable()
    assert torch.equal(*results)


def test_t2i_adapter_residuals_work_on_cached_steps():
    pipe, cond, base = baseline("sd")
    shapes = []
    last_resnets = [b.resnets[-1] for b in pipe.unet.down_blocks]  # residuals join before the downsampler
    hooks = [r.register_forward_hook(lambda m, i, o: shapes.append(o.shape)) for r in last_resnets]
    with torch.no_grad():
        pipe.unet(torch.randn(2, 4, 8, 8), 500, **cond)
    [h.remove() for h in hooks]

    def call(u, x, t, c):  # the adapter list is consumed (popped) by the U-Net: pass a fresh one
        adapter = [torch.full(s, 0.1) for s in shapes]
        return u(x, t, **c, down_intrablock_additional_residuals=adapter).sample

    with cachediff.deepcache(pipe, interval=1, branch=0):
        exact = sample(pipe, cond, call=call)
    plain = sample(pipe, cond, call=call)
    assert torch.equal(exact, plain) and not torch.equal(plain, base)
    for branch in (0, 5, 11):
        with cachediff.deepcache(pipe, interval=3, branch=branch):
            assert torch.isfinite(sample(pipe, cond, call=call)).all()


# ----------------------------------------------------------------------------- schedules
def test_non_uniform_schedule_uses_the_run_length_from_the_scheduler():
    pipe, cond, _ = baseline("sd")
    with cachediff.deepcache(
        pipe, interval=3, branch=0, schedule="non-uniform", center=4, power=1.2
    ) as engine:
        sample(pipe, cond, steps=20)
    expected = schedule.quadratic_center(20, 7, 4, 1.2)
    assert [c.step for c in engine.stats.calls if c.full] == list(expected)


def test_non_uniform_on_a_bare_unet_needs_reset_with_num_steps():
    unet, cond = tiny_unet("sd", batch=1)
    x = torch.randn(1, 4, 8, 8)
    engine = DeepCacheEngine(unet, DeepCacheConfig(interval=3, schedule="non-uniform", center=2, power=1.2))
    engine.enable()
    with pytest.raises(ValueError, match="number of steps"):
        unet(x, 500, **cond)
    engine.reset(num_steps=9)
    for t in range(9):
        unet(x, 900 - 100 * t, **cond)
    assert [c.step for c in engine.stats.calls if c.full] == list(schedule.quadratic_center(9, 3, 2, 1.2))
    engine.disable()


def test_zeros_ablation_feeds_zeros_instead_of_the_cached_feature():
    unet, cond = tiny_unet("sd", batch=1)
    x = torch.randn(1, 4, 8, 8)
    seen = []
    hook = unet.up_blocks[3].resnets[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    with torch.no_grad(), cachediff.deepcache(unet, interval=2, branch=2, reuse="zeros"):
        full = unet(x, 500, **cond).sample
        ablated = unet(x, 500, **cond).sample
    hook.remove()
    channels = unet.up_blocks[2].resnets[-1].out_channels  # the cached feature's part of the input
    assert seen[0][:, :channels].abs().sum() > 0 and torch.all(seen[1][:, :channels] == 0)
    assert not torch.equal(full, ablated)


# ----------------------------------------------------------------------------- refined and adaptive
def test_refined_schedule_follows_the_pure_rule_in_a_pipeline():
    pipe, cond, _ = baseline("sd")
    config = DeepCacheConfig(interval=3, warmup=2, cooldown=2, max_cached=1)
    with cachediff.deepcache(pipe, **vars(config)) as engine:
        sample(pipe, cond, steps=12)
    assert [c.step for c in engine.stats.calls if c.full] == list(config.full_steps_for(12))


def test_adaptive_with_a_tiny_threshold_is_the_baseline():
    pipe, cond, base = baseline("sd")
    with cachediff.deepcache(pipe, schedule="adaptive", threshold=1e-9) as engine:
        out = sample(pipe, cond)
    assert engine.stats.pattern == "F" * 10 and torch.equal(out, base)


def test_adaptive_with_a_huge_threshold_caches_up_to_the_cap():
    pipe, cond, _ = baseline("sd")
    with cachediff.deepcache(pipe, schedule="adaptive", threshold=1e9, max_cached=3, cooldown=1) as engine:
        sample(pipe, cond)
    assert engine.stats.pattern == "FCCCFCCCFF"  # cap of 3, last step full


def replay(changes, interval):
    """The paced adaptive rule re-derived from the recorded changes, independently of the engine."""
    steps = len(changes)
    pattern, drift, seen, budget = "F", 0.0, [], -(-steps // interval) - 1
    for step, change in enumerate(changes[1:], start=1):
        seen.append(change)
        drift += change
        full = budget > 0 and drift >= sum(seen) / len(seen) * (steps - step) / budget
        pattern += "F" if full else "C"
        drift, budget = (0.0, budget - 1) if full else (drift, budget)
    return pattern


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("interval", [2, 4])
def test_adaptive_budget_decisions_follow_the_measured_change(kind, interval):
    pipe, cond, _ = baseline(kind)
    with cachediff.deepcache(pipe, interval=interval, branch=1, schedule="adaptive") as engine:
        sample(pipe, cond, steps=16)
    stats = engine.stats
    assert stats.changes[0] is None and all(c > 0 for c in stats.changes[1:])
    assert stats.pattern == replay(stats.changes, interval)
    assert 1 < stats.full_steps <= -(-16 // interval)  # it refreshes, within the budget


def test_track_change_records_changes_for_static_schedules_without_changing_the_output():
    pipe, cond, _ = baseline("sd")
    with cachediff.deepcache(pipe, interval=3) as plain:
        a = sample(pipe, cond)
    with cachediff.deepcache(pipe, interval=3, track_change=True) as tracked:
        b = sample(pipe, cond)
    assert torch.equal(a, b) and plain.stats.pattern == tracked.stats.pattern
    assert all(c is None for c in plain.stats.changes) and tracked.stats.changes[1] > 0
    assert "10 calls: 4 full, 6 cached" in tracked.stats.summary(2.0, 1.0)


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


def test_a_deep_copy_of_a_hooked_scheduler_runs_its_own_unhooked_methods():
    import copy
    import inspect

    from diffusers import DDIMScheduler

    from cachediff.hooks import Hooks

    scheduler, calls = DDIMScheduler(), []
    hooks = Hooks()
    hooks.wrap(
        scheduler, lambda original: lambda *a, **k: calls.append(1) or original(*a, **k), "set_timesteps"
    )
    clone = copy.deepcopy(scheduler)  # as Text2Video-Zero does inside its __call__
    clone.set_timesteps(7)
    assert calls == [] and len(clone.timesteps) == 7 and scheduler.timesteps is not clone.timesteps
    scheduler.set_timesteps(5)
    assert calls == [1] and len(scheduler.timesteps) == 5 and len(clone.timesteps) == 7
    assert "eta" in inspect.signature(scheduler.step).parameters  # unwrapped
    hooks.wrap(scheduler, lambda original: original, "step")  # diffusers inspects step's parameters
    assert list(inspect.signature(scheduler.step).parameters)[:3] == ["model_output", "timestep", "sample"]
    hooks.remove_all()
    assert "set_timesteps" not in vars(scheduler) and "step" not in vars(scheduler)
