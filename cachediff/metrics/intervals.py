"""Confidence intervals by bootstrap over images: which differences between settings are real.

A table of FID, class score or fidelity says nothing about a difference smaller than its noise. Each
function here resamples the images of a setting with replacement (scipy's ``bootstrap``; BCa for
means and pooled PSNR; for FID, a normal interval from the bootstrap's spread) and returns
the estimate with its 95% interval. Fidelity is *paired*: two settings sampled from the same seeds
are compared image by image (``psnr_difference``), which is much sharper than two separate intervals.

Example:
    >>> import numpy as np
    >>> values = np.random.default_rng(0).normal(1.0, 0.5, size=400)
    >>> ci = mean_interval(values)
    >>> ci.low < 1.0 < ci.high, round(ci.high - ci.low, 2)
    (True, 0.1)
    >>> round(float(psnr_of_mse(np.array([0.01, 0.03]))), 4)  # pooled: of the mean MSE, range 2
    23.0103
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: the confidence level of every interval
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """An estimate and its confidence interval ``[low, high]``."""

    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.estimate:.2f} [{self.low:.2f}, {self.high:.2f}]"

    def excludes(self, value: float) -> bool:
        """Whether ``value`` lies outside the interval (a difference from it is real at this level)."""
        return not self.low <= value <= self.high

    def columns(self, name: str) -> dict:
        """``{name: estimate, name_lo: low, name_hi: high}``, as a sweep row holds it."""
        return {name: self.estimate, f"{name}_lo": self.low, f"{name}_hi": self.high}


def psnr_of_mse(mse: np.ndarray, data_range: float = 2.0, axis: int = -1) -> np.ndarray | float:
    """Pooled PSNR in dB: of the mean of per-image MSEs (``inf`` where every image is exact)."""
    mean = np.mean(mse, axis=axis)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(data_range**2 / mean)


def _bootstrap(samples: tuple, statistic: Callable, resamples: int, seed: int, paired: bool) -> Interval:
    estimate = float(statistic(*samples, axis=-1))
    if len(samples[0]) < 2 or not math.isfinite(estimate):
        return Interval(estimate, estimate, estimate)
    with warnings.catch_warnings():  # all values alike: BCa is undefined, handled below
        warnings.simplefilter("ignore", (stats.DegenerateDataWarning, RuntimeWarning))
        result = stats.bootstrap(
            samples, statistic, n_resamples=resamples, confidence_level=LEVEL, paired=paired,
            vectorized=True, method="BCa", rng=np.random.default_rng(seed),
        )  # fmt: skip
    low, high = result.confidence_interval
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa degenerate (e.g. all values equal)
        low = high = estimate
    return Interval(estimate, float(low), float(high))


def mean_interval(values, resamples: int = 2000, seed: int = 0) -> Interval:
    """The mean of per-image ``values`` (class scores, distances) with its interval."""
    return _bootstrap((np.asarray(values, dtype=np.float64),), np.mean, resamples, seed, paired=False)


def psnr_interval(mse, data_range: float = 2.0, resamples: int = 2000, seed: int = 0) -> Interval:
    """Pooled PSNR (``psnr_of_mse``) of per-image MSEs with its interval.

    Example:
        >>> ci = psnr_interval(np.full(50, 0.01))  # every image alike: no spread
        >>> round(ci.estimate, 2), ci.low == ci.high == ci.estimate
        (26.02, True)
    """

    def statistic(m, axis=-1):
        return psnr_of_mse(m, data_range, axis)

    return _bootstrap((np.asarray(mse, dtype=np.float64),), statistic, resamples, seed, paired=False)


def psnr_difference(mse_a, mse_b, data_range: float = 2.0, resamples: int = 2000, seed: int = 0) -> Interval:
    """PSNR of setting a minus PSNR of setting b, both to one reference from the same seeds, with a
    paired interval (the same images resampled for both): a > b for real where ``low > 0``.

    Example:
        >>> rng = np.random.default_rng(1)
        >>> base = rng.uniform(0.005, 0.02, size=200)
        >>> ci = psnr_difference(base * 0.9, base)  # a is 10% closer on every image
        >>> round(ci.estimate, 3), ci.low > 0
        (0.458, True)
    """

    def statistic(a, b, axis=-1):
        return psnr_of_mse(a, data_range, axis) - psnr_of_mse(b, data_range, axis)

    samples = (np.asarray(mse_a, dtype=np.float64), np.asarray(mse_b, dtype=np.float64))
    return _bootstrap(samples, statistic, resamples, seed, paired=True)


def fid_interval(
    features: np.ndarray,
    mu_ref: np.ndarray,
    sigma_ref: np.ndarray,
    resamples: int = 100,
    seed: int = 0,
    progress: Callable | None = None,
) -> Interval:
    """FID of ``features`` (N, D) against reference statistics, with a normal interval (the estimate
    +- 1.96 standard deviations of its bootstrap over ``resamples`` resamplings of the images; the
    reference is held fixed, as it is the same for every setting). Resampling with replacement
    repeats images and so raises FID: the bootstrap's spread is kept, its shifted centre is not.
    Each resample costs one symmetric eigendecomposition of D x D.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> ref = rng.normal(size=(2000, 4))
        >>> ci = fid_interval(rng.normal(0.3, 1, size=(500, 4)), ref.mean(0), np.cov(ref, rowvar=False))
        >>> bool(ci.low < 4 * 0.3**2 < ci.high)
        True
    """
    f = np.asarray(features, dtype=np.float64)
    w, v = np.linalg.eigh(sigma_ref)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # sigma_ref^(1/2), once
    trace_ref = np.trace(sigma_ref)

    def fid_of(sample: np.ndarray) -> float:
        mu, sigma = sample.mean(0), np.cov(sample, rowvar=False)
        cross = np.linalg.eigvalsh(root @ sigma @ root)  # eigenvalues of S_ref^(1/2) S S_ref^(1/2)
        trace_root = np.sqrt(np.clip(cross, 0, None)).sum()
        return float(np.sum((mu - mu_ref) ** 2) + np.trace(sigma) + trace_ref - 2 * trace_root)

    rng = np.random.default_rng(seed)
    draws = []
    for _ in (progress or (lambda r: r))(range(resamples)):
        draws.append(fid_of(f[rng.integers(0, len(f), len(f))]))
    estimate = fid_of(f)
    if not draws:
        return Interval(estimate, estimate, estimate)
    half = stats.norm.ppf((1 + LEVEL) / 2) * float(np.std(draws, ddof=1))
    return Interval(estimate, estimate - half, estimate + half)
