"""Metrics as plain functions: MACs (torch.utils.flop_counter), latency (interleaved medians), peak
memory, fidelity."""

from .fidelity import mse, psnr
from .latency import interleaved, speedup
from .macs import average_macs, count_macs
from .memory import peak_memory, return_freed_memory

__all__ = [
    "average_macs",
    "count_macs",
    "interleaved",
    "mse",
    "peak_memory",
    "psnr",
    "return_freed_memory",
    "speedup",
]
