"""Baseline and DeepCache back to back on one pipeline: timings, MACs, fidelity.

Scripts stay thin: they parse flags, call ``compare`` and save its images and record.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from . import metrics
from .accelerators import SHALLOW_BLOCKS, accelerator, macs_per_call
from .config import DeepCacheConfig
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
    config: DeepCacheConfig,
    seeds: list[int],
    steps: int,
    repeats: int = 2,
    task="unconditional",
    shallow_blocks: int = SHALLOW_BLOCKS,
    **inputs,
):
    """Run baseline and DeepCache interleaved; return (Comparison, baseline images, DeepCache images).

    ``task`` names a ``TASKS`` entry; ``inputs`` are its further arguments (prompt, image, ...);
    ``shallow_blocks`` is the DiT blocks at each end that run on every step (U-Nets: ``config.branch``).
    """
    pipes = [pipe] + ([inputs["refiner"]] if inputs.get("refiner") is not None else [])
    engines = [accelerator(p, config, steps, shallow_blocks) for p in pipes]
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
    per_unet = [(macs_per_call(e), e.stats) for e in engines]  # base, refiner
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
