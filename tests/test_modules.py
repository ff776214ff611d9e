"""Layer 3: the module-level caching API on a tiny PixArt-alpha transformer and on tiny U-Nets."""

from __future__ import annotations

import diffusers
import pytest
import torch

import cachediff
from cachediff import DeepCacheConfig, testing
from cachediff.accelerators import accelerator
from cachediff.modules import CacheRule, ModuleCache, every
from cachediff.testing import sample, tiny_pipe, tiny_transformer


def denoise(model, cond, pipe=None, steps: int = 8) -> torch.Tensor:
    """A DDIM loop through the transformer, as PixArtAlphaPipeline runs it (learned sigma dropped)."""
    scheduler = diffusers.DDIMScheduler()
    if pipe is not None:
        pipe.scheduler = scheduler
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))

    def call(m, x, t, c):
        return m(x, timestep=t.expand(x.shape[0]), **c, return_dict=False)[0][:, :4]

    return testing.denoise(model, scheduler, x, cond, steps, guidance=4.0, call=call)


@pytest.fixture(scope="module")
def dit():
    model, cond = tiny_transformer()
    return model, cond, denoise(model, cond)


def block_rule(interval: int, mode: str = "residual") -> CacheRule:
    return CacheRule("transformer_blocks.[1-2]", every(interval), mode=mode)


def test_interval_one_equals_the_baseline(dit):
    model, cond, base = dit
    with ModuleCache(model, [block_rule(1)]) as cache:
        out = denoise(model, cond)
    assert torch.equal(out, base) and cache.stats.pattern == "F" * 8


@pytest.mark.parametrize("mode", ["residual", "output"])
def test_cached_blocks_run_only_on_compute_steps_and_the_plan_says_so(dit, mode):
    model, cond, base = dit
    runs, index = {i: 0 for i in range(4)}, {b.attn1: i for i, b in enumerate(model.transformer_blocks)}

    def count(m, args, out):
        if m in index:
            runs[index[m]] += 1

    # a global hook: a hook on a cached block would make every call full (cachediff.guard)
    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        cache = ModuleCache(model, [block_rule(3, mode)])
        plan = cache.plan(8)
        with cache:
            out = denoise(model, cond)
    finally:
        handle.remove()
    assert plan == {"transformer_blocks.1": (1, 2, 4, 5, 7), "transformer_blocks.2": (1, 2, 4, 5, 7)}
    assert runs == {0: 8, 1: 3, 2: 3, 3: 8}
    assert cache.reused == {name: len(steps) for name, steps in plan.items()}
    assert cache.stats.pattern == "FCCFCCFC"
    assert not torch.equal(out, base)


def test_residual_reuse_beats_output_reuse_on_transformer_blocks(dit):
    model, cond, base = dit
    err = {}
    for mode in ("residual", "output"):
        with ModuleCache(model, [block_rule(2, mode)]):
            err[mode] = float((denoise(model, cond) - base).norm())
    assert err["residual"] < err["output"]


def test_unmatched_selector_is_an_error(dit):
    model, _, _ = dit
    with pytest.raises(ValueError, match=r"rule 1 \('blocks\.\*'\) matches no module"):
        ModuleCache(model, [block_rule(2), CacheRule("blocks.*", every(2))])
    with pytest.raises(ValueError, match="rule 0 \\(never\\) matches no module"):

        def never(name, module):
            return False

        ModuleCache(model, [CacheRule(never, every(2))])


def test_outermost_selection_wins_and_filters_select(dit):
    model, _, _ = dit
    cache = ModuleCache(model, [CacheRule("transformer_blocks*", every(2))])
    assert list(cache.selected) == ["transformer_blocks"]
    attn = ModuleCache(model, [CacheRule(lambda n, m: n.endswith("attn2"), every(2), "output")])
    assert list(attn.selected) == [f"transformer_blocks.{i}.attn2" for i in range(4)]
    assert "transformer_blocks.0.attn2 [output] cached on 3 steps: 1, 3, 5" in attn.describe(7)


def test_residual_mode_needs_a_shape_preserving_module(dit):
    model, cond, _ = dit
    with ModuleCache(model, [CacheRule("proj_out", every(2), mode="residual")]):
        with pytest.raises(TypeError, match="residual mode needs a tensor output shaped like the input"):
            denoise(model, cond)


def test_a_pipeline_scheduler_counts_the_steps(dit):
    model, cond, base = dit
    pipe = type("Pipe", (), {})()
    with ModuleCache(model, [block_rule(1)], pipeline=pipe) as cache:
        denoise(model, cond, pipe=pipe)
        out = denoise(model, cond, pipe=pipe)  # a second run starts afresh
    assert torch.equal(out, base) and [c.step for c in cache.stats.calls] == list(range(8))


@pytest.mark.parametrize("kind,branch", [("sd", 0), ("sd", 5), ("sdxl", 2), ("ddpm", 1)])
def test_unet_deep_modules_in_output_mode_equal_deepcache(kind, branch):
    """DeepCache is a special case: reuse every deep module's output on cached steps."""
    pipe, cond = tiny_pipe(kind)
    with cachediff.deepcache(pipe, interval=3, branch=branch) as engine:
        expected = sample(pipe, cond)
    deep = set(engine.plan.deep)
    rule = CacheRule(lambda name, m: name in deep, every(3), mode="output")
    with ModuleCache(pipe.unet, [rule], pipeline=pipe) as cache:
        out = sample(pipe, cond)
    assert torch.equal(out, expected)
    assert cache.stats.pattern == engine.stats.pattern


def test_dit_rule_on_a_pipeline_like_object(dit):
    model, cond, base = dit
    pipe = type("Pipe", (), {})()
    pipe.transformer = model
    with cachediff.cache_modules(pipe, [cachediff.dit_rule(model, interval=1)]) as cache:
        out = denoise(model, cond, pipe=pipe)
    assert torch.equal(out, base) and list(cache.selected) == ["transformer_blocks.1", "transformer_blocks.2"]
    with pytest.raises(ValueError, match=r"shallow must be in \[0, 2.0\)"):
        cachediff.dit_rule(model, 2, shallow=2)


def test_a_transformer_takes_no_skip_branch_and_no_phases(dit):
    """``accelerators.accelerator`` on a DiT: branches and per-phase cuts are U-Net cuts."""
    model, _, _ = dit
    pipe = type("Pipe", (), {"transformer": model})()
    for config in (DeepCacheConfig(branch=1), DeepCacheConfig(branch=0, phases=((0.5, 1),))):
        with pytest.raises(ValueError, match="is a transformer without skip branches"):
            accelerator(pipe, config, 10)
