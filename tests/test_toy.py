"""Layer 2: an analytic toy U-Net whose blocks are exact float64 arithmetic.

The toy has the diffusers block layout (down blocks with ``resnets`` and ``downsamplers``, a
``mid_block``, up blocks with ``resnets`` and ``upsamplers``), registered in ``SPECS`` as data. Each
op counts its calls, so the tests see exactly which ops computed on which step, and compare the
output with an independent reference written from DeepCache's definition.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cachediff import DeepCacheConfig, DeepCacheEngine, schedule
from cachediff.unets import SPECS, UNetSpec, branch_plan, num_branches


class Op(nn.Module):
    """y = a * x + c (float64), counting calls."""

    def __init__(self, a: float, c: float):
        super().__init__()
        self.a, self.c, self.calls = a, c, 0

    def forward(self, x, *args):
        self.calls += 1
        return self.a * x + self.c


class Down(nn.Module):
    def __init__(self, k: int, layers: int, downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(Op(1.0 + 0.1 * (k + i), k + i) for i in range(layers))
        self.downsamplers = nn.ModuleList([Op(0.5, 1.0)]) if downsample else None

    def forward(self, h):
        out = ()
        for r in self.resnets:
            h = r(h)
            out += (h,)
        for d in self.downsamplers or []:
            h = d(h)
            out += (h,)
        return h, out


class Up(nn.Module):
    def __init__(self, k: int, layers: int, upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(Op(0.9 - 0.05 * i, -k - i) for i in range(layers))
        self.upsamplers = nn.ModuleList([Op(2.0, 0.0)]) if upsample else None

    def forward(self, h, skips):
        for r in self.resnets:
            h, skips = r(h + 10 * skips[-1]), skips[:-1]
        for u in self.upsamplers or []:
            h = u(h)
        return h


class ToyUNet(nn.Module):
    """Three levels, ``layers`` resnets per down block, ``layers + 1`` per up block (as diffusers)."""

    def __init__(self, levels: int = 3, layers: int = 2):
        super().__init__()
        self.conv_in = Op(1.0, 0.0)
        self.down_blocks = nn.ModuleList(Down(k, layers, k < levels - 1) for k in range(levels))
        self.mid_block = Op(3.0, 1.0)
        self.up_blocks = nn.ModuleList(Up(k, layers + 1, k < levels - 1) for k in range(levels))

    def forward(self, sample, timestep):
        h = self.conv_in(sample) + timestep
        skips = (h,)
        for block in self.down_blocks:
            h, out = block(h)
            skips += out
        h = self.mid_block(h)
        for block in self.up_blocks:
            n = len(block.resnets)
            h, skips = block(h, skips[-n:]), skips[:-n]
        return (h,)


def ordered_ops(unet: ToyUNet):
    """(down ops in order, each producing one skip) and (up-side ops in order, with the skip consumed)."""
    down = [op for b in unet.down_blocks for op in [*b.resnets, *(b.downsamplers or [])]]
    up, skip = [(unet.mid_block, None)], len(down)
    for b in unet.up_blocks:
        for r in b.resnets:
            up.append((r, skip))
            skip -= 1
        up += [(u, None) for u in b.upsamplers or []]
    return down, up


def reference(unet: ToyUNet, inputs, branch: int, full_steps: set[int], cuts=None, refresh=True):
    """DeepCache by definition: cache the hidden state entering the up op that consumes skip ``branch``.
    With ``cuts`` (a branch per step: per-phase cuts), a cached step cuts at its own branch, and every
    step keeps, for each branch of ``cuts``, the state entering the up op it runs that consumes it
    (without ``refresh``: full steps only)."""
    down, up = ordered_ops(unet)
    a = lambda op, x: op.a * x + op.c  # noqa: E731 (no call counting here)
    cuts = cuts or [branch] * len(inputs)
    outputs, kept = [], {}
    for step, (x, t) in enumerate(inputs):
        full, cut = step in full_steps, cuts[step]
        h = a(unet.conv_in, x) + t
        skips = [h]
        for op in down[: len(down) if full else cut]:
            h = a(op, h)
            skips.append(h)
        start = 0
        if not full:
            start = next(i for i, (_, s) in enumerate(up) if s == cut)
            h = kept[cut]
        for op, s in up[start:]:
            if s in cuts and (full or refresh and s < cut):
                kept[s] = h
            h = a(op, h if s is None else h + 10 * skips[s])
        outputs.append(h)
    return outputs


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(SPECS, "ToyUNet", UNetSpec())
    return ToyUNet()


def run(unet, inputs):
    return [unet(x, t)[0] for x, t in inputs]


def make_inputs(steps: int):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(3, generator=g, dtype=torch.float64), 1000.0 - 100 * i) for i in range(steps)]


def test_toy_has_one_branch_per_skip(toy):
    assert num_branches(toy) == 1 + 3 * 2 + 2  # conv_in, 6 resnets, 2 downsamplers


@pytest.mark.parametrize("branch", range(9))
@pytest.mark.parametrize("interval", [1, 2, 3, 5])
def test_output_equals_reference_definition(toy, branch, interval):
    inputs = make_inputs(11)
    full = {s for s in range(11) if s % interval == 0}
    engine = DeepCacheEngine(toy, DeepCacheConfig(interval=interval, branch=branch)).enable()
    got = run(toy, inputs)
    expected = reference(toy, inputs, branch, full)
    for g, e in zip(got, expected, strict=False):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-9)
    assert engine.stats.n_full == len(full)


@pytest.mark.parametrize("branch,phases", [(0, ((0.5, 4),)), (4, ((0.5, 0),)), (8, ((3, 2), (7, 5)))])
@pytest.mark.parametrize("interval", [2, 3])
@pytest.mark.parametrize("refresh", [None, False])
def test_per_phase_cuts_equal_the_reference_definition(toy, branch, phases, interval, refresh):
    """Each cached step cuts at its phase's branch, above the deep feature kept for that branch (kept
    afresh wherever its group runs, or with ``refresh=False`` on full steps only)."""
    inputs = make_inputs(11)
    full, cuts = {s for s in range(11) if s % interval == 0}, list(schedule.cuts(11, branch, phases))
    config = DeepCacheConfig(interval=interval, branch=branch, phases=phases, refresh=refresh)
    with DeepCacheEngine(toy, config) as engine:
        engine.reset(num_steps=11)
        got = run(toy, inputs)
    expected = reference(toy, inputs, branch, full, cuts, refresh is not False)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-9)
    assert engine.stats.n_full == len(full)
    assert not all(
        torch.allclose(g, e) for g, e in zip(got, reference(toy, inputs, branch, full), strict=True)
    )


def test_per_phase_cuts_without_refresh_keep_full_steps_features(toy):
    """N = 3, branch 4, then 0 from step 5: step 4 is cached and cut at 4, so it runs branch 0's group;
    step 5, cut at 0, replays the feature that step 4 computed, or without refresh full step 3's."""
    inputs, full, cuts = make_inputs(11), {0, 3, 6, 9}, [4] * 5 + [0] * 6
    outputs = {}
    for refresh in (None, False):
        config = DeepCacheConfig(interval=3, branch=4, phases=((5, 0),), refresh=refresh)
        with DeepCacheEngine(toy, config):
            outputs[refresh] = run(toy, inputs)
    for refresh, expected in ((None, True), (False, False)):
        for g, e in zip(outputs[refresh], reference(toy, inputs, 4, full, cuts, expected), strict=True):
            torch.testing.assert_close(g, e, rtol=0, atol=1e-9)
    same = [torch.equal(a, b) for a, b in zip(*outputs.values(), strict=True)]
    assert same == [True] * 5 + [False] + [True] * 5
    assert DeepCacheEngine(toy, config).describe(11).endswith("kept from full steps only")


def test_per_phase_cuts_run_the_deep_ops_of_each_phase(toy):
    """Steps 0..9, N = 2, branch 0 up to step 4, then 4: a down op that produces skip
    1..4 runs on full steps and on the cached steps of the second half (5, 7, 9), a deeper one on full
    steps only; at interval 1 the output is the model's own, bit for bit."""
    inputs = make_inputs(10)
    uncached = run(toy, inputs)
    with DeepCacheEngine(toy, DeepCacheConfig(interval=1, branch=0, phases=((5, 4),))):
        assert all(torch.equal(a, b) for a, b in zip(run(toy, inputs), uncached, strict=True))
    for op in ordered_ops(toy)[0]:
        op.calls = 0
    with DeepCacheEngine(toy, DeepCacheConfig(interval=2, branch=0, phases=((5, 4),))) as engine:
        run(toy, inputs)  # a phase that starts at a step needs no run length
    assert [op.calls for op in ordered_ops(toy)[0]] == [8, 8, 8, 8, 5, 5, 5, 5]  # op i produces skip i + 1
    assert engine.stats.pattern == "FCFCFCFCFC"
    assert "cached steps cut at branch 4: 5, 7, 9\ncached steps cut at branch 0: 1, 3" in engine.describe(10)


@pytest.mark.parametrize("branch", range(9))
def test_deep_ops_run_only_on_full_steps_and_shallow_ops_always(toy, branch):
    steps, interval = 10, 3
    engine = DeepCacheEngine(toy, DeepCacheConfig(interval=interval, branch=branch)).enable()
    run(toy, make_inputs(steps))
    n_full = len(range(0, steps, interval))
    down, up = ordered_ops(toy)
    for i, op in enumerate(down):  # op i produces skip i + 1
        assert op.calls == (steps if i + 1 <= branch else n_full), f"down op {i}"
    consumer = next(i for i, (_, s) in enumerate(up) if s == branch)
    for i, (op, _) in enumerate(up):  # everything from the consumer of skip `branch` on is shallow
        assert op.calls == (steps if i >= consumer else n_full), f"up op {i}"
    assert toy.conv_in.calls == steps
    engine.disable()


def test_explicit_schedule_full_steps_are_exactly_the_listed_ones(toy):
    engine = DeepCacheEngine(
        toy, DeepCacheConfig(schedule="explicit", full_steps=(0, 4, 5), branch=2)
    ).enable()
    run(toy, make_inputs(8))
    assert engine.stats.pattern == "FCCCFFCC"
    assert toy.mid_block.calls == 3


def test_disable_restores_the_model_exactly(toy):
    inputs = make_inputs(6)
    base = run(toy, inputs)
    engine = DeepCacheEngine(toy, DeepCacheConfig(interval=3, branch=0)).enable()
    cached = run(toy, inputs)
    engine.disable()
    assert not any("forward" in vars(m) for m in toy.modules())
    assert all(torch.equal(a, b) for a, b in zip(base, run(toy, inputs), strict=False))
    assert not all(torch.equal(a, b) for a, b in zip(base, cached, strict=False))


def test_plan_names_the_deep_modules(toy):
    plan = branch_plan(toy, 0)
    assert plan.producer == "up_blocks.2.resnets.1"
    assert plan.deep[:3] == ("down_blocks.0", "down_blocks.1", "down_blocks.2")


@pytest.mark.parametrize("branch", [0, 4, 8])
def test_a_linear_forecast_is_exact_where_the_deep_feature_is_affine_in_t(toy, branch):
    """The toy's ops are affine, so with one input and evenly spaced timesteps its deep feature is
    affine in t: from the second full step on, the order-2 forecast gives the uncached output, which
    replay does not."""
    x = torch.randn(3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    inputs = [(x, 1000.0 - 90 * i) for i in range(11)]
    exact = run(toy, inputs)
    for reuse, matches in (("forecast", True), ("cache", False)):
        config = DeepCacheConfig(interval=3, branch=branch, reuse=reuse)
        with DeepCacheEngine(toy, config):
            got = run(toy, inputs)[3:]  # after the second full step (step 3)
        close = [torch.allclose(g, e, rtol=1e-12, atol=1e-9) for g, e in zip(got, exact[3:], strict=True)]
        assert all(close) if matches else not any(close[1:3]), reuse
