"""The engine on the CompVis / Stability ``UNetModel`` (issue 16): bit-exact against a hand-written
DeepCache forward on tiny random models of the SD-1.5 and cin256-v2 (LDM-4-G) configurations, interval
1 and enable/disable parity, the branch map, MACs per branch of the real configurations."""

from __future__ import annotations

import pytest
import torch

import cachediff
from cachediff import DeepCacheConfig, DeepCacheEngine
from cachediff.accelerators import call_macs
from cachediff.compvis import CONFIGS, TINY, build_unet, example_inputs, randomised

pytest.importorskip("ldm.modules.diffusionmodules.openaimodel", reason="stable-diffusion-sdkit not installed")

from ldm.modules.diffusionmodules.util import timestep_embedding  # noqa: E402

KINDS = sorted(TINY)
TIMES = [999.0, 900.0, 750.0, 600.0, 420.0, 250.0, 100.0]


def tiny(kind: str, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny random model (every weight drawn, as zero-initialised layers would hide the cut) and a
    CFG-sized latent and context."""
    torch.manual_seed(seed)
    unet = randomised(build_unet(TINY[kind]), std=0.1)
    inputs = example_inputs(kind, batch=2, tiny=True)
    x, context = torch.randn_like(inputs["x"]), torch.randn_like(inputs["context"])
    return unet, x, context


def reference(unet, x, t, context, branch: int, full: bool, kept: torch.Tensor | None):
    """DeepCache written out on UNetModel's forward: a full call runs everything and keeps the input
    of the output block that consumes skip ``branch``; a cached call runs input blocks 0..b, then
    that output block and the ones after it, from the kept feature."""
    emb = unet.time_embed(timestep_embedding(t, unet.model_channels, repeat_only=False))
    n, hs, h = len(unet.input_blocks), [], x.type(unet.dtype)
    for block in unet.input_blocks[: n if full else branch + 1]:
        h = block(h, emb, context)
        hs.append(h)
    if full:
        h = unet.middle_block(h, emb, context)
    first = 0 if full else n - 1 - branch
    for j in range(first, n):
        if j == n - 1 - branch:
            h = kept = h if full else kept
        h = unet.output_blocks[j](torch.cat([h, hs[n - 1 - j]], dim=1), emb, context)
    return unet.out(h.type(x.dtype)), kept


@pytest.mark.parametrize("kind", KINDS)
def test_every_branch_equals_the_hand_written_forward(kind):
    unet, x, context = tiny(kind)
    n = cachediff.num_branches(unet)
    assert n == len(unet.input_blocks) == len(unet.output_blocks)
    for branch in range(n):
        engine = DeepCacheEngine(unet, DeepCacheConfig(interval=3, branch=branch))
        kept, expected = None, []
        with torch.no_grad():
            for step, t in enumerate(TIMES):
                out, kept = reference(unet, x, torch.full((2,), t), context, branch, step % 3 == 0, kept)
                expected.append(out)
            with engine:
                got = [unet(x, torch.full((2,), t), context=context) for t in TIMES]
        assert engine.stats.pattern == "FCCFCCF"
        for step, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert torch.equal(a, b), (kind, branch, step)


@pytest.mark.parametrize("kind", KINDS)
def test_interval_1_and_leaving_the_engine_are_bit_exact(kind):
    unet, x, context = tiny(kind, seed=1)

    def run() -> list[torch.Tensor]:
        with torch.no_grad():
            return [unet(x, torch.full((2,), t), context=context) for t in TIMES]

    base = run()
    with cachediff.deepcache(unet, interval=1, branch=2):
        exact = run()
    with cachediff.deepcache(unet, interval=4, branch=0):
        cached = run()
    after = run()
    assert not torch.equal(cached[1], base[1])  # the cut is live
    for a, b, c in zip(exact, after, base, strict=True):
        assert torch.equal(a, c) and torch.equal(b, c)
    assert "forward" not in vars(unet)


def test_the_branch_map_names_blocks_and_the_producer():
    unet, _, _ = tiny("sd-v1")
    engine = DeepCacheEngine(unet, DeepCacheConfig(interval=5, branch=1))
    text = engine.describe(50)
    n = len(unet.input_blocks)
    assert f"branch 1 (paper branch 2) of 0..{n - 1}" in text
    assert f"output of output_blocks.{n - 3}" in text and "middle_block" in text
    with pytest.raises(ValueError, match=f"branch must be an integer in 0..{n - 1}"):
        DeepCacheEngine(unet, DeepCacheConfig(branch=n))


def test_a_model_named_unetmodel_of_another_layout_is_refused():
    class UNetModel(torch.nn.Module):  # same class name, no block lists
        pass

    with pytest.raises(TypeError, match="has no input_blocks and output_blocks"):
        cachediff.num_branches(UNetModel())


@pytest.mark.parametrize("name, full_g, branch0_g", [("cin256-v2", 99.77, 4.42), ("sd-v1", 338.61, 20.69)])
def test_macs_of_the_real_configurations(name, full_g, branch0_g):
    """Counted on a ``meta`` model (no memory, no compute). SD 1.5's full call equals the diffusers
    U-Net's (338.61 G, ../shared/ANCHORS.md); cached MACs grow with the branch."""
    unet = build_unet(CONFIGS[name], device="meta")
    inputs = example_inputs(name, device="meta")
    cached = []
    for branch in range(cachediff.num_branches(unet)):
        full, c = call_macs(DeepCacheEngine(unet, DeepCacheConfig(branch=branch)), inputs)
        assert full / 1e9 == pytest.approx(full_g, abs=0.01)
        cached.append(c)
    assert cached[0] / 1e9 == pytest.approx(branch0_g, abs=0.01)
    assert cached == sorted(cached) and cached[-1] < full


def test_the_class_embedder_is_the_papers_not_sdkits():
    """sdkit's ClassEmbedder (the SD 2 repository's) replaces 10% of the labels by the unconditional
    class on every call; latent-diffusion's, which the paper sampled with, does not: ours is that one."""
    from cachediff.compvis import ClassEmbedder

    encoders = pytest.importorskip("ldm.modules.encoders.modules", reason="imports open_clip")
    SdkitEmbedder = encoders.ClassEmbedder  # noqa: N806

    torch.manual_seed(0)
    labels = torch.arange(1000)
    ours, theirs = ClassEmbedder(8, n_classes=1001), SdkitEmbedder(8, n_classes=1001)
    theirs.load_state_dict(ours.state_dict())
    expected = ours.embedding.weight[labels][:, None]
    assert torch.equal(ours(labels), expected) and ours(labels).shape == (1000, 1, 8)
    dropped = (theirs({"class": labels}) != expected).any(-1).sum().item()
    assert 50 < dropped < 150  # about 10% of 1000 labels became class 1000
