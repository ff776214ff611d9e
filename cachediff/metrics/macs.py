"""MACs from PyTorch's own ``torch.utils.flop_counter`` (1 MAC = 2 FLOPs), per step and per schedule.

Example:
    >>> import torch
    >>> count_macs(lambda: torch.nn.Linear(10, 20)(torch.ones(3, 10)))
    600
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import DeepCacheConfig
from ..engine import DeepCacheEngine


def count_macs(fn: Callable[[], object]) -> int:
    """Multiply-accumulates of everything ``fn`` runs (attention score matmuls inside fused SDPA
    kernels on CPU are not counted, matching the paper's counts)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops() // 2


def step_macs(unet: torch.nn.Module, inputs: dict, branch: int) -> tuple[int, int]:
    """MACs of one full step and one cached step of ``unet`` on ``inputs`` (keyword arguments)."""
    engine = DeepCacheEngine(unet, DeepCacheConfig(interval=2, branch=branch)).enable()
    try:
        full = count_macs(lambda: unet(**inputs))
        cached = count_macs(lambda: unet(**inputs))
    finally:
        engine.disable()
    return full, cached


def average_macs(full: int, cached: int, n_full: int, n_steps: int) -> float:
    """Average MACs per step of a run with ``n_full`` full steps out of ``n_steps``.

    Example:
        >>> average_macs(10, 2, n_full=1, n_steps=5)
        3.6
    """
    return (n_full * full + (n_steps - n_full) * cached) / n_steps
