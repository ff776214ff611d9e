"""MACs on the real architectures (random weights on the ``meta`` device: shapes only, no compute)
against the paper and ../shared/ANCHORS.md. Attention matmuls are excluded, as in the paper."""

from __future__ import annotations

import functools

import pytest
import torch

from cachediff import DeepCacheConfig, engine_for
from cachediff.accelerators import call_macs
from cachediff.architectures import build, example_inputs
from cachediff.metrics import average_macs, count_macs

# Measured with the official helper's cut (ANCHORS.md): SD 1.5 cached step per branch id, GMACs.
SD15_CACHED = [20.7, 57.3, 98.0, 132.6, 167.6, 208.4, 243.0, 278.2, 315.0, 322.7, 327.7, 332.6]
# Paper Table 12: DDPM CIFAR-10, N=5 on 100 DDIM steps, average GMACs per paper branch 1..12.
TABLE_12 = [1.60, 2.24, 3.01, 3.89, 4.58, 5.31, 5.45, 5.60, 5.88, 5.95, 5.99, 6.03]


@functools.cache
def meta_unet(name):
    with torch.device("meta"):
        unet = build(name)
        return unet, example_inputs(unet, batch=1)


def test_sd15_full_step_matches_the_paper_within_1_percent():
    unet, inputs = meta_unet("sd1.5")
    assert count_macs(lambda: unet(**inputs)) / 1e9 == pytest.approx(338.83, rel=0.01)


def test_attention_matmuls_are_counted_only_on_request():
    unet, inputs = meta_unet("sd1.5")
    assert count_macs(lambda: unet(**inputs), attention=True) > 1.1 * count_macs(lambda: unet(**inputs))


@pytest.mark.parametrize("branch", range(12))
def test_sd15_cached_step_per_branch(branch):
    unet, inputs = meta_unet("sd1.5")
    _, cached = call_macs(engine_for(unet, DeepCacheConfig(branch=branch)), inputs)
    assert cached / 1e9 == pytest.approx(SD15_CACHED[branch], abs=0.1)


def test_ddpm_cifar10_full_step():
    unet, inputs = meta_unet("ddpm-cifar10")
    assert count_macs(lambda: unet(**inputs)) / 1e9 == pytest.approx(6.1, rel=0.01)


@pytest.mark.parametrize("branch", range(12))
def test_ddpm_cifar10_table_12_averages_within_3_percent(branch):
    unet, inputs = meta_unet("ddpm-cifar10")
    full, cached = call_macs(engine_for(unet, DeepCacheConfig(branch=branch)), inputs)
    assert average_macs(full, cached, n_full=20, n_steps=100) / 1e9 == pytest.approx(
        TABLE_12[branch], rel=0.03
    )
