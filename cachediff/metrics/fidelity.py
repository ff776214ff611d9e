"""How close an accelerated output is to the uncached output for the same seeds.

Example:
    >>> import torch
    >>> a = torch.zeros(2, 1, 4, 4)
    >>> round(psnr(a, a + 0.1, data_range=2.0), 2)
    26.02
"""

from __future__ import annotations

import math

import torch


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error over all elements."""
    return float(torch.mean((a.double() - b.double()) ** 2))


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB (``data_range`` 2.0 for images in [-1, 1]); inf if equal."""
    err = mse(a, b)
    return math.inf if err == 0 else 10 * math.log10(data_range**2 / err)
