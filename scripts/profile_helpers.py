"""Operator-level comparison of the official DeepCache 0.1.1 helper and cachediff on one sampling loop.

Runs the same DDIM loop as ``scripts/bench.py`` (``cachediff.testing.denoise_example``) once under
each helper with ``torch.profiler`` (after one unprofiled warm-up run) and prints the aten operators
whose call counts differ, with their self CPU times, and the summed operator time of each. Equal
operator lists mean equal work: any difference in wall time is then Python overhead or noise.

Example:
    python scripts/profile_helpers.py --arch sd1.5 --size 8 --interval 5 --branch 0
"""

from __future__ import annotations

import argparse
from collections import Counter
from types import SimpleNamespace

import torch
from diffusers import DDIMScheduler

from cachediff import DeepCacheSDHelper
from cachediff.architectures import CPU_SIZES, build, example_inputs
from cachediff.testing import denoise_example


def profile(pipe, helper, inputs: dict, steps: int) -> tuple[Counter, Counter]:
    """Calls and self CPU microseconds per aten operator of one loop under ``helper``."""
    helper.enable()
    try:
        denoise_example(pipe, inputs, steps)  # warm-up
        with torch.profiler.profile() as prof:
            denoise_example(pipe, inputs, steps)
    finally:
        helper.disable()
    events = prof.key_averages()
    return Counter({e.key: e.count for e in events}), Counter({e.key: e.self_cpu_time_total for e in events})


def main() -> None:
    from DeepCache import DeepCacheSDHelper as Official

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=list(CPU_SIZES), default="sd1.5", help="architecture (random weights)")
    p.add_argument("--size", type=int, default=8, help="latent side")
    p.add_argument("--steps", type=int, default=5, help="DDIM steps of the profiled loop")
    p.add_argument("--interval", type=int, default=5, help="cache interval N")
    p.add_argument("--branch", type=int, default=0, help="cache branch id")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    if min(args.size, args.steps, args.interval, args.threads) < 1 or args.branch < 0:
        p.error("--size, --steps, --interval, --threads must be >= 1, --branch >= 0")
    torch.set_num_threads(args.threads)
    unet = build(args.arch)
    inputs = example_inputs(unet, batch=2, size=args.size, frames=CPU_SIZES[args.arch][1])
    pipe = SimpleNamespace(unet=unet, scheduler=DDIMScheduler())
    result = {}
    for name, cls in (("official", Official), ("cachediff", DeepCacheSDHelper)):
        helper = cls(pipe)
        helper.set_params(cache_interval=args.interval, cache_branch_id=args.branch)
        result[name] = profile(pipe, helper, inputs, args.steps)
    (calls_o, time_o), (calls_c, time_c) = result["official"], result["cachediff"]
    differ = sorted(calls_o.keys() | calls_c.keys(), key=lambda k: -abs(calls_o[k] - calls_c[k]))
    print(
        "| operator | calls official | calls cachediff | ms official | ms cachediff |\n|---|---|---|---|---|"
    )
    for k in (k for k in differ if calls_o[k] != calls_c[k]):
        print(f"| {k} | {calls_o[k]} | {calls_c[k]} | {time_o[k] / 1e3:.1f} | {time_c[k] / 1e3:.1f} |")
    total_o, total_c = sum(time_o.values()) / 1e6, sum(time_c.values()) / 1e6
    same = sum(calls_o[k] == calls_c[k] for k in differ)
    print(f"\n{same} of {len(differ)} operators called equally often; operator time ", end="")
    print(f"{total_o:.2f} s official, {total_c:.2f} s cachediff")


if __name__ == "__main__":
    main()
