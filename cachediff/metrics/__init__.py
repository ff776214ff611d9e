"""Metrics as plain functions: MACs (torch.utils.flop_counter), latency (interleaved medians), peak
memory, fidelity (per image, to a reference from the same noise) and confidence intervals."""

from .fidelity import feature_distance, mse, mse_per_image, psnr, psnr_per_image
from .intervals import Interval, fid_interval, mean_interval, psnr_difference, psnr_interval, psnr_of_mse
from .latency import interleaved, speedup
from .macs import average_macs, count_macs
from .memory import peak_memory, return_freed_memory

__all__ = [
    "Interval",
    "average_macs",
    "count_macs",
    "feature_distance",
    "fid_interval",
    "interleaved",
    "mean_interval",
    "mse",
    "mse_per_image",
    "peak_memory",
    "psnr",
    "psnr_difference",
    "psnr_interval",
    "psnr_of_mse",
    "psnr_per_image",
    "return_freed_memory",
    "speedup",
]
