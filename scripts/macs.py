"""MACs per step of a real architecture: full step, cached step per branch, and schedule averages.

Counts with ``torch.utils.flop_counter`` on the ``meta`` device (shapes only: instant, no weights),
leaving attention matmuls out as the paper does.

Example:
    python scripts/macs.py --arch sd1.5 --steps 50 --interval 5
    python scripts/macs.py --arch ddpm-cifar10 --steps 100 --interval 5 --csv docs/results/macs_ddpm.csv
    python scripts/macs.py --arch compvis-cin256-v2 --steps 250 --interval 5   # LDM-4-G, the paper's Table 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cachediff import DeepCacheConfig, compvis, engine_for
from cachediff.accelerators import call_macs
from cachediff.architectures import ARCHITECTURES, build, example_inputs
from cachediff.files import write_csv
from cachediff.metrics import average_macs
from cachediff.unets import num_branches

COMPVIS = "compvis-"
ARCHS = sorted(ARCHITECTURES) + [COMPVIS + name for name in sorted(compvis.CONFIGS)]


def table(arch: str, steps: int, interval: int, size: int | None) -> list[dict]:
    """One row per branch id: full, cached and average GMACs per image for a uniform schedule."""
    if arch.startswith(COMPVIS):  # the CompVis / Stability UNetModel of a configuration
        unet = compvis.build_unet(compvis.CONFIGS[arch.removeprefix(COMPVIS)], device="meta")
        inputs = compvis.example_inputs(arch.removeprefix(COMPVIS), device="meta")
    else:
        with torch.device("meta"):
            unet = build(arch)
            inputs = example_inputs(unet, batch=1, size=size)
    n_full = DeepCacheConfig(interval).budget(steps)
    rows = []
    for b in range(num_branches(unet)):
        full, cached = call_macs(engine_for(unet, DeepCacheConfig(branch=b)), inputs)
        avg = average_macs(full, cached, n_full, steps)
        rows.append(
            dict(
                branch=b,
                paper_branch=b + 1,
                full_gmacs=full / 1e9,
                cached_gmacs=cached / 1e9,
                average_gmacs=avg / 1e9,
                mac_speedup=full / avg,
            )
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--arch", default="sd1.5", choices=ARCHS, help="U-Net architecture (compvis-*: the CompVis UNetModel)"
    )
    p.add_argument(
        "--size", type=int, help="latent side (default: the architecture's sample size; not compvis-*)"
    )
    p.add_argument("--steps", type=int, default=50, help="steps per run")
    p.add_argument("--interval", type=int, default=5, help="uniform cache interval N")
    p.add_argument("--csv", type=Path, help="also write the table as CSV")
    args = p.parse_args()
    if args.steps < 1 or args.interval < 1:
        p.error("--steps and --interval must be >= 1")
    rows = table(args.arch, args.steps, args.interval, args.size)
    n_full = DeepCacheConfig(args.interval).budget(args.steps)
    print(f"{args.arch}: {args.steps} steps, N={args.interval} ({n_full} full)")
    print("| branch (paper) | full G | cached G | average G | MAC speedup |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['branch']} ({r['paper_branch']}) | {r['full_gmacs']:.2f} | {r['cached_gmacs']:.2f} "
            f"| {r['average_gmacs']:.2f} | {r['mac_speedup']:.2f}x |"
        )
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
