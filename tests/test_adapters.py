"""Layer 3: ControlNet and T2I-Adapter residuals on cached steps: equal to the official helper, and
to DeepCache's definition written with plain PyTorch hooks."""

from __future__ import annotations

import pytest
import torch
from helpers import enabled, reference_deepcache
from helpers import tiny_baseline as baseline

import cachediff
from cachediff.testing import sample, tiny_pipe


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
    pipe, cond = tiny_pipe("sd")  # its own: the official helper leaves instance forwards behind
    down, mid = controlnet_residuals(pipe.unet, torch.randn(2, 4, 8, 8), cond)
    cn_cond = dict(cond, down_block_additional_residuals=down, mid_block_additional_residual=mid)
    results = []
    for helper_cls in (official.DeepCacheSDHelper, cachediff.DeepCacheSDHelper):
        with enabled(helper_cls(pipe), dict(cache_interval=3, cache_branch_id=branch)):
            results.append(sample(pipe, {**cn_cond}, call=lambda u, x, t, c: u(x, t, **c).sample))
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
    for branch in (0, 5, 11):  # cached steps equal DeepCache's definition written with plain torch hooks
        with cachediff.deepcache(pipe, interval=3, branch=branch) as engine:
            ours = sample(pipe, cond, call=call)
        with reference_deepcache(pipe.unet, engine.plan.producer, interval=3):
            expected = sample(pipe, cond, call=call)
        assert torch.equal(ours, expected) and not torch.equal(ours, plain), branch
