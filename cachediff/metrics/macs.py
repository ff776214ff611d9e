"""MACs from PyTorch's own ``torch.utils.flop_counter`` (1 MAC = 2 FLOPs), per step and per schedule.

Example:
    >>> import torch
    >>> count_macs(lambda: torch.nn.Linear(10, 20)(torch.ones(3, 10)))
    600
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import DeepCacheConfig
from ..engine import DeepCacheEngine

_aten = torch.ops.aten
#: Attention score and value matmuls (QK^T, AV): the paper's MAC counts leave them out.
ATTENTION_OPS = [
    _aten.bmm,
    _aten.baddbmm,
    *(getattr(_aten, name) for name in dir(_aten) if name.startswith("_scaled_dot_product")),
    *(getattr(_aten, name) for name in ("_flash_attention_forward", "_efficient_attention_forward")),
]


def _zero(*args, **kwargs) -> int:
    return 0


def count_macs(fn: Callable[[], object], attention: bool = False) -> int:
    """Multiply-accumulates of everything ``fn`` runs, on any device (``meta`` included).

    Args:
        fn: the computation, e.g. ``lambda: unet(**inputs)``.
        attention: also count the attention matmuls QK^T and AV, which the paper leaves out.
    """
    mapping = {} if attention else {op: _zero for op in ATTENTION_OPS}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops() // 2


def step_macs(unet: torch.nn.Module, inputs: dict, branch: int, attention: bool = False) -> tuple[int, int]:
    """MACs of one full step and one cached step of ``unet`` on ``inputs`` (keyword arguments).

    Works on the ``meta`` device, where it costs no compute.
    """
    engine = DeepCacheEngine(unet, DeepCacheConfig(interval=2, branch=branch))
    return _full_then_cached(engine, lambda: unet(**inputs), attention)


def module_step_macs(model: torch.nn.Module, inputs: dict, rules, attention: bool = False) -> tuple[int, int]:
    """MACs of one full call and one call with every module the ``rules`` select reused
    (``cachediff.modules.CacheRule`` list; their step predicates are ignored). Works on ``meta``.

    Example:
        >>> from cachediff.modules import CacheRule, every
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
        >>> module_step_macs(net, dict(input=torch.ones(1, 4)), [CacheRule("1", every(1))])
        (112, 48)
    """
    from ..modules import ModuleCache, every

    cache = ModuleCache(model, [dataclasses.replace(r, reuse=every(2)) for r in rules])
    return _full_then_cached(cache, lambda: model(**inputs), attention)


def _full_then_cached(cache, call: Callable[[], object], attention: bool) -> tuple[int, int]:
    """MACs of two calls under ``cache`` (enabled for them): step 0 is full, step 1 cached."""
    cache.enable()
    try:
        return count_macs(call, attention), count_macs(call, attention)
    finally:
        cache.disable()


def average_macs(full: int, cached: int, n_full: int, n_steps: int) -> float:
    """Average MACs per step of a run with ``n_full`` full steps out of ``n_steps``.

    Example:
        >>> average_macs(10, 2, n_full=1, n_steps=5)
        3.6
    """
    return (n_full * full + (n_steps - n_full) * cached) / n_steps
