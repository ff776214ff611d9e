"""Metrics as plain functions: MACs (torch.utils.flop_counter), latency (interleaved medians), fidelity."""

from .fidelity import mse, psnr
from .latency import interleaved, speedup
from .macs import average_macs, count_macs, step_macs

__all__ = ["average_macs", "count_macs", "interleaved", "mse", "psnr", "speedup", "step_macs"]
