"""Fidelity: how close an accelerated output is to a reference from the same noise, image by image.

Two references judge an acceleration (docs/PLANNING.md): the *unaccelerated run the user asked for*
(same sampler, steps and seeds) and the *converged solution* of the same ODE from the same noise (a
fine solve with trailing spacing, ``cachediff.reference``). Per-image values feed the intervals of
``cachediff.metrics.intervals``; the pooled PSNR is the PSNR of the mean MSE.

A perceptual distance without LPIPS (whose weights ship in no package): the cosine distance of the
two images' 2048-d pool features of the pinned FID Inception network (``cachediff.metrics.fid``), the
feature space that FID itself compares, so a small distance means FID sees the same image.

Example:
    >>> import torch
    >>> a = torch.zeros(2, 1, 4, 4)
    >>> round(psnr(a, a + 0.1, data_range=2.0), 2)
    26.02
    >>> mse_per_image(a, torch.stack([a[0] + 0.1, a[1] + 0.2])).round(4).tolist()
    [0.01, 0.04]
"""

from __future__ import annotations

import math

import numpy as np
import torch


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error over all elements."""
    return float(torch.mean((a.double() - b.double()) ** 2))


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB (``data_range`` 2.0 for images in [-1, 1]); inf if equal."""
    err = mse(a, b)
    return math.inf if err == 0 else 10 * math.log10(data_range**2 / err)


def mse_per_image(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """MSE of each image pair, ``(N,)`` float64, for images ``(N, ...)`` of the same seeds."""
    if a.shape != b.shape:
        raise ValueError(f"images to compare differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    return ((a.double() - b.double()) ** 2).flatten(1).mean(1).numpy()


def psnr_per_image(mse: np.ndarray, data_range: float = 2.0, cap: float = 100.0) -> np.ndarray:
    """Each image's PSNR in dB from its MSE, capped at ``cap`` (an exact image would be ``inf``). Their
    mean weighs every image alike, where the pooled PSNR (of the mean MSE) is ruled by the worst few:
    a seed whose trajectory falls into another mode costs the pooled value several dB.

    Example:
        >>> psnr_per_image(np.array([0.04, 0.0004, 0.0])).tolist()
        [20.0, 40.0, 100.0]
    """
    with np.errstate(divide="ignore"):
        return np.minimum(10 * np.log10(data_range**2 / np.asarray(mse, dtype=np.float64)), cap)


def feature_distance(features_a: np.ndarray, features_b: np.ndarray) -> np.ndarray:
    """Cosine distance (1 - cosine similarity, in [0, 2]) of each pair of feature rows, ``(N,)``.

    Example:
        >>> feature_distance(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 0.0], [-1.0, -1.0]]))
        array([0., 2.])
    """
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return 1 - np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)
