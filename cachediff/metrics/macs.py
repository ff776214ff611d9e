"""MACs from PyTorch's own ``torch.utils.flop_counter`` (1 MAC = 2 FLOPs) of any computation, and the
average of a run. The MACs of an accelerator's full and cached calls: ``cachediff.accelerators``.

Example:
    >>> import torch
    >>> count_macs(lambda: torch.nn.Linear(10, 20)(torch.ones(3, 10)))
    600
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..stats import average_macs  # noqa: F401  (the formula lives with the run statistics)

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
