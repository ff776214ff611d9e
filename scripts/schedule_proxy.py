"""A fast proxy for choosing schedule parameters: PSNR of each candidate's output to the uncached
output of the same number of steps, on held-out seeds (10000 and up, disjoint from the FID seeds
0..1999 of the sweep), on the MNIST DDPM or the tiny Stable Diffusion.

The headline comparison is FID (``scripts/sweep.py``, ``make mnist-results`` / ``make
tiny-sd-results``); this proxy only picks the parameters that the sweep then measures, so the FID seeds
are never used for tuning. Candidate sets (``--candidates``):

  schedules      uniform, the sweep's schedules (``cachediff.suites.SCHEDULES``) and a few more
  nonuniform     the paper's non-uniform schedule over a grid of centres (0.1 T .. 0.6 T) and
                 powers 1.2 / 1.4 / 1.6, as its Table 10 was chosen (the power is lowered by the
                 official rule where the budget does not fit)
  forecast       replay against the forecast of order 2 and 3, uniform and adaptive, with and without
                 the shallow-feature fallback (``reuse="forecast", fallback=True``)

Examples:
    python scripts/schedule_proxy.py --images 32 --out runs/schedule-proxy.csv
    python scripts/schedule_proxy.py --steps 20 --branch 0 --budgets 2 3 --out runs/proxy-20.csv
    python scripts/schedule_proxy.py --model_type tiny-sd --budgets 5 --candidates nonuniform forecast \\
        --images 40 --out runs/tiny-sd-proxy.csv
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cachediff import DeepCacheConfig, metrics
from cachediff.engine import DeepCacheEngine
from cachediff.files import output_folder, write_csv
from cachediff.generation import TASKS
from cachediff.loading import guidance, load_pipeline
from cachediff.pipelines import get_preset
from cachediff.prompts import load_prompts
from cachediff.suites import SCHEDULES

Candidates = dict[str, Callable[[int, int], dict]]

#: The sweep's schedules and a few more (label -> (N, T) -> config fields).
SCHEDULE_CANDIDATES: Candidates = {
    "uniform": lambda n, t: {},
    **SCHEDULES,
    "nonuniform-c50": lambda n, t: dict(schedule="non-uniform", center=round(0.5 * t)),
    "nonuniform-c60": lambda n, t: dict(schedule="non-uniform", center=round(0.6 * t)),
    "adaptive-warmup5": lambda n, t: dict(schedule="adaptive", warmup=5),
}


def _nonuniform(fraction: float, power: float) -> Callable[[int, int], dict]:
    return lambda n, t: dict(schedule="non-uniform", center=round(fraction * t), power=power)


#: The paper's non-uniform schedule over centres (fractions of T) and powers.
NONUNIFORM_CANDIDATES: Candidates = {
    f"nonuniform-c{round(100 * c)}-p{p}": _nonuniform(c, p)
    for c, p in itertools.product((0.1, 0.2, 0.3, 0.4, 0.5, 0.6), (1.2, 1.4, 1.6))
}

#: Replay against the forecast, uniform and adaptive, with and without the fallback.
FORECAST_CANDIDATES: Candidates = {
    f"{schedule}-{label}": (lambda s, o: lambda n, t: dict(schedule=s, **o))(schedule, options)
    for schedule in ("uniform", "adaptive")
    for label, options in {
        "replay": {},
        "f2": dict(reuse="forecast", order=2),
        "f2-fallback": dict(reuse="forecast", order=2, fallback=True),
        "f3": dict(reuse="forecast", order=3),
        "f3-fallback": dict(reuse="forecast", order=3, fallback=True),
    }.items()
}

CANDIDATES = {
    "schedules": SCHEDULE_CANDIDATES,
    "nonuniform": NONUNIFORM_CANDIDATES,
    "forecast": FORECAST_CANDIDATES,
}
MODEL_TYPES = ("ddpm-mnist", "tiny-sd")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_type", default="ddpm-mnist", choices=MODEL_TYPES, help="shipped model to tune on")
    p.add_argument(
        "--candidates", nargs="+", default=["schedules"], choices=list(CANDIDATES), help="candidate sets"
    )
    p.add_argument("--images", type=int, default=32, help="held-out images per candidate")
    p.add_argument("--first-seed", type=int, default=10000, help="first held-out seed")
    p.add_argument("--budgets", type=int, nargs="+", default=[5, 10], help="intervals N to match")
    p.add_argument("--steps", type=int, help="steps T of every run (default: the preset's)")
    p.add_argument("--branch", type=int, help="branch id, paper branch + 1 (default: the preset's)")
    p.add_argument("--batch", type=int, default=32, help="images per pipeline call")
    p.add_argument("--out", type=Path, default=Path("runs/schedule-proxy.csv"), help="CSV of the results")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args(argv)
    if min(args.images, args.batch, args.threads, args.steps or 1) < 1 or min(args.budgets) < 2:
        p.error("--images, --batch, --threads and --steps must be >= 1, every budget N >= 2")
    if args.branch is not None and args.branch < 0:
        p.error("--branch must be >= 0")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        output_folder(args.out.parent)  # fails now, not after the runs
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    torch.set_num_threads(args.threads)
    preset = get_preset(args.model_type)
    steps, branch = args.steps or preset.steps, preset.branch if args.branch is None else args.branch
    pipe = load_pipeline(preset)
    pipe.set_progress_bar_config(disable=True)
    seeds = list(range(args.first_seed, args.first_seed + args.images))
    inputs = {}
    if preset.task == "text2image":  # prompt k of the preset's set for seed k, as the sweep cycles them
        names = load_prompts(preset.prompts)
        inputs = dict(prompt=[names[s % len(names)] for s in seeds], **guidance(preset.model_path()))

    def sample() -> torch.Tensor:
        out = []
        for i in range(0, len(seeds), args.batch):
            extra = {k: v[i : i + args.batch] if k == "prompt" else v for k, v in inputs.items()}
            out.append(TASKS[preset.task](pipe, seeds[i : i + args.batch], steps, **extra))
        return torch.cat(out)

    base = sample()
    engine = DeepCacheEngine(pipe.unet, DeepCacheConfig(), pipeline=pipe)
    candidates = {k: v for name in args.candidates for k, v in CANDIDATES[name].items()}
    rows = []
    for n, label in tqdm(list(itertools.product(args.budgets, candidates)), desc="candidates"):
        try:
            config = DeepCacheConfig(branch=branch, **{"interval": n, **candidates[label](n, steps)})
            if not config.adaptive:
                config.full_steps_for(steps)
        except ValueError as err:  # e.g. no non-uniform schedule with that many full steps
            tqdm.write(f"N={n:<3d} {label:24s} not applicable: {err}")
            continue
        with engine.configure(config):
            out = sample()
        psnr = metrics.psnr(out, base, 2.0)
        full = engine.stats.n_full
        rows.append(dict(model_type=args.model_type, steps=steps, branch=branch, budget_n=n, schedule=label,
                         n_full=full, psnr_db=psnr))  # fmt: skip
        write_csv(rows, args.out)
        tqdm.write(f"N={n:<3d} {label:24s} full calls {full:3d}  PSNR {psnr:.2f} dB")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
