"""Fidelity and confidence intervals (issue 26) against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cachediff import metrics
from cachediff.metrics import fid


def test_per_image_mse_and_pooled_psnr_by_hand():
    a = torch.zeros(3, 1, 2, 2)
    b = torch.stack([a[0] + 0.1, a[1] - 0.2, a[2]])
    b[2, 0, 0, 0] = 0.4  # one pixel of four: 0.16 / 4
    mse = metrics.mse_per_image(a, b)
    np.testing.assert_allclose(mse, [0.01, 0.04, 0.04], rtol=1e-6)  # float32 inputs
    assert metrics.psnr_of_mse(mse) == pytest.approx(10 * math.log10(4 / 0.03), rel=1e-6)
    assert metrics.psnr_of_mse(mse) == pytest.approx(metrics.psnr(a, b))  # pooled = PSNR of all pixels
    assert metrics.psnr_of_mse(np.zeros(3)) == math.inf
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.mse_per_image(a, b[:2])


def test_feature_distance_by_hand():
    a = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    b = np.array([[6.0, 8.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(metrics.feature_distance(a, b), [0.0, 1.0, 1 - 1 / math.sqrt(2)], atol=1e-12)


def test_a_constant_ratio_on_every_image_is_an_exact_difference():
    """Every image of a twice as far from the reference as b: -3.01 dB, and no resample differs."""
    mse_b = np.random.default_rng(0).uniform(0.001, 0.05, size=300)
    ci = metrics.psnr_difference(2 * mse_b, mse_b)
    assert ci.estimate == pytest.approx(-10 * math.log10(2))
    assert ci.low == pytest.approx(ci.estimate) and ci.high == pytest.approx(ci.estimate)
    assert ci.excludes(0.0) and not ci.excludes(ci.estimate)


def test_a_paired_difference_is_sharper_than_two_separate_intervals():
    """Images vary much more among themselves than between two close settings: the paired interval
    sees a 0.2 dB difference that the two settings' own intervals overlap on."""
    rng = np.random.default_rng(1)
    mse_b = rng.lognormal(np.log(0.01), 1.0, size=400)
    mse_a = mse_b * 10 ** (-0.02) * rng.lognormal(0, 0.05, size=400)  # a: 0.2 dB closer, a little noise
    a, b = metrics.psnr_interval(mse_a), metrics.psnr_interval(mse_b)
    assert a.low < b.high  # separately: overlapping
    paired = metrics.psnr_difference(mse_a, mse_b)
    assert 0 < paired.low < 0.2 < paired.high < 0.4


def test_the_mean_interval_covers_the_mean_at_its_width():
    rng = np.random.default_rng(2)
    values = rng.normal(0.7, 0.2, size=1000)
    ci = metrics.mean_interval(values)
    assert ci.estimate == pytest.approx(values.mean())
    assert ci.low < 0.7 < ci.high
    assert ci.high - ci.low == pytest.approx(2 * 1.96 * 0.2 / math.sqrt(1000), rel=0.15)
    assert metrics.mean_interval([0.5, 0.5, 0.5]) == metrics.Interval(0.5, 0.5, 0.5)


def test_the_fid_interval_is_centred_on_fid_and_narrows_with_more_images():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(3000, 6))
    mu, sigma = ref.mean(0), np.cov(ref, rowvar=False)
    few, many = rng.normal(0.5, 1.0, size=(200, 6)), rng.normal(0.5, 1.0, size=(2000, 6))
    cis = [metrics.fid_interval(features, mu, sigma, resamples=60) for features in (few, many)]
    for features, ci in zip((few, many), cis, strict=True):
        assert ci.estimate == pytest.approx(fid.frechet_distance(*fid.feature_stats(features), mu, sigma))
        assert ci.low < ci.estimate < ci.high
    assert cis[1].low < 6 * 0.5**2 < cis[1].high  # the true distance, |mu shift|^2, at 2,000 images
    assert cis[1].high - cis[1].low < 0.6 * (cis[0].high - cis[0].low)


def test_interval_columns_name_their_bounds():
    assert metrics.Interval(1.0, 0.5, 1.5).columns("fid") == dict(fid=1.0, fid_lo=0.5, fid_hi=1.5)
    assert str(metrics.Interval(31.234, 30.9, 31.6)) == "31.23 [30.90, 31.60]"
