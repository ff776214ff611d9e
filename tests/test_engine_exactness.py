"""Layer 3: the engine on real diffusers U-Net classes (tiny random weights, CPU, seeded) is exact:
interval 1 is the baseline, disable restores it, deep blocks run only on full steps, a cached step on
the same input reproduces the full step, in-place changes of the feature do not leak into the cache."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import enabled
from helpers import tiny_baseline as baseline

import cachediff
from cachediff import DeepCacheConfig, schedule
from cachediff.testing import latent_shape, sample, tiny_unet

KINDS = ["sd", "sdxl", "svd", "ddpm"]


def count_calls(module):
    """Count real executions of ``module`` (a forward hook fires only when its forward runs). A global
    hook: one on the module itself would make every call full (``cachediff.guard``)."""
    counter = SimpleNamespace(n=0)
    hook = torch.nn.modules.module.register_module_forward_hook
    handle = hook(lambda m, *_: setattr(counter, "n", counter.n + 1) if m is module else None)
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
    with enabled(cachediff.engine_for(pipe, DeepCacheConfig(interval=3, branch=1))):
        cached = sample(pipe, cond)
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
    assert mid.n == first_up.n == n_full == engine.stats.n_full
    assert engine.stats.n_cached == 10 - n_full


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
