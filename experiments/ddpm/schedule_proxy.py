"""A fast proxy for choosing schedule parameters: PSNR of each schedule's output to the uncached
output of the same number of steps (100 by default), on held-out seeds (10000 and up, disjoint from
the FID seeds 0..1999 of the sweep).

The headline comparison is FID (``make mnist-results``: ``scripts/sweep.py --suites schedules``); this
proxy only picks the parameters that the sweep then measures, so the FID seeds are never used for tuning.

Example:
    python experiments/ddpm/schedule_proxy.py --images 32 --out runs/schedule-proxy.csv
    python experiments/ddpm/schedule_proxy.py --steps 30 --branch 0 --budgets 2 3 --out runs/proxy-30.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cachediff import DeepCacheConfig, metrics
from cachediff.engine import DeepCacheEngine
from cachediff.files import write_csv
from cachediff.generation import load_pipeline, unconditional
from cachediff.pipelines import get_preset
from cachediff.suites import SCHEDULES, Plan

BRANCH, BUDGETS = Plan().branch, Plan().budgets

#: Candidates beyond the sweep's own schedules (label -> (N, T) -> config fields).
CANDIDATES = {
    "uniform": lambda n, t: {},
    **SCHEDULES,
    "nonuniform-c50": lambda n, t: dict(schedule="non-uniform", center=round(0.5 * t)),
    "nonuniform-c60": lambda n, t: dict(schedule="non-uniform", center=round(0.6 * t)),
    "adaptive-warmup5": lambda n, t: dict(schedule="adaptive", warmup=5),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=32, help="held-out images per schedule")
    p.add_argument("--first-seed", type=int, default=10000, help="first held-out seed")
    p.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS), help="intervals N to match")
    p.add_argument("--steps", type=int, default=100, help="DDIM steps T of every run")
    p.add_argument("--branch", type=int, default=BRANCH, help="branch id (paper branch + 1)")
    p.add_argument("--out", type=Path, default=Path("runs/schedule-proxy.csv"), help="CSV of the results")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args()
    if min(args.images, args.steps) < 1 or min(args.budgets) < 2 or args.branch < 0:
        p.error("--images and --steps must be >= 1, every budget N >= 2, --branch >= 0")
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(get_preset("ddpm-mnist"))
    pipe.set_progress_bar_config(disable=True)
    seeds = list(range(args.first_seed, args.first_seed + args.images))
    base = unconditional(pipe, seeds, args.steps)
    engine = DeepCacheEngine(pipe.unet, DeepCacheConfig(), pipeline=pipe)
    rows = []
    jobs = [(n, label) for n in args.budgets for label in CANDIDATES]
    for n, label in tqdm(jobs, desc="schedules"):
        try:
            config = DeepCacheConfig(
                branch=args.branch, **{"interval": n, **CANDIDATES[label](n, args.steps)}
            )
            if config.schedule != "adaptive":
                config.full_steps_for(args.steps)
        except ValueError as err:  # e.g. no non-uniform schedule with that many full steps
            tqdm.write(f"N={n:<3d} {label:18s} not applicable: {err}")
            continue
        engine.configure(config).enable()
        try:
            out = unconditional(pipe, seeds, args.steps)
        finally:
            engine.disable()
        psnr = metrics.psnr(out, base, 2.0)
        full = engine.stats.n_full
        rows.append(
            dict(
                steps=args.steps,
                branch=args.branch,
                budget_n=n,
                schedule=label,
                n_full=full,
                psnr_db=psnr,
            )
        )
        write_csv(rows, args.out)
        tqdm.write(f"N={n:<3d} {label:18s} full steps {engine.stats.n_full:3d}  PSNR {psnr:.2f} dB")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
