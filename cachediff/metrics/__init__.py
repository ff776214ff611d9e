"""Metrics as plain functions: MACs (torch.utils.flop_counter), latency (interleaved medians), fidelity."""

from .fidelity import mse, psnr
from .latency import interleaved, speedup
from .macs import average_macs, count_macs, module_step_macs, step_macs

__all__ = [
    "average_macs",
    "count_macs",
    "interleaved",
    "module_step_macs",
    "mse",
    "psnr",
    "speedup",
    "step_macs",
]
