"""Baseline and DeepCache back to back on one pipeline: timings, MACs, fidelity.

Scripts stay thin: they parse flags, call ``compare`` and save its images and record.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from . import metrics
from .accelerators import call_macs
from .core import Session
from .generation import TASKS


@dataclass
class Comparison:
    """Results of one baseline-vs-DeepCache comparison."""

    baseline_seconds: float
    deepcache_seconds: float
    speedup: float
    macs_full: int
    macs_cached: int
    macs_average: float
    mac_speedup_bound: float
    n_full: int
    steps: int
    psnr_db: float
    mse: float
    psnr_db_lo: float = float("nan")  # 95% interval of psnr_db, bootstrap over the images
    psnr_db_hi: float = float("nan")


def compare(
    pipe,
    engines: list[Session],
    seeds: list[int],
    steps: int,
    repeats: int = 2,
    task="unconditional",
    **inputs,
):
    """Run baseline and DeepCache interleaved; return (Comparison, baseline images, DeepCache images).

    ``engines`` accelerate the pipeline's denoiser and, where ``inputs`` hold a ``refiner``
    pipeline, the refiner's (``cachediff.accelerators.accelerator``); ``task`` names a ``TASKS``
    entry; ``inputs`` are its further arguments (prompt, image, ...).
    """
    generate = TASKS[task]
    images = {}

    def run(name, cached):
        def fn():
            try:
                for e in engines if cached else ():
                    e.enable()
                images[name] = generate(pipe, seeds, steps, **inputs)
            finally:
                for e in engines:
                    e.disable()

        return fn

    times = metrics.interleaved(
        {"baseline": run("baseline", False), "deepcache": run("deepcache", True)}, repeats
    )
    per_unet = [(call_macs(e), e.stats) for e in engines]  # base, refiner
    calls = sum(len(stats.calls) for _, stats in per_unet)
    avg = sum(stats.average_macs(f, c) * len(stats.calls) for (f, c), stats in per_unet) / calls
    uncached = sum(f * len(stats.calls) for (f, _), stats in per_unet) / calls
    full, cached = per_unet[0][0]
    ci = metrics.psnr_interval(metrics.mse_per_image(images["deepcache"], images["baseline"]))
    result = Comparison(
        baseline_seconds=statistics.median(times["baseline"]),
        deepcache_seconds=statistics.median(times["deepcache"]),
        speedup=metrics.speedup(times["baseline"], times["deepcache"]),
        macs_full=full,
        macs_cached=cached,
        macs_average=avg,
        mac_speedup_bound=uncached / avg,
        n_full=sum(stats.n_full for _, stats in per_unet),
        steps=calls,
        psnr_db=metrics.psnr(images["baseline"], images["deepcache"]),
        mse=metrics.mse(images["baseline"], images["deepcache"]),
        psnr_db_lo=ci.low,
        psnr_db_hi=ci.high,
    )
    return result, images["baseline"], images["deepcache"]
