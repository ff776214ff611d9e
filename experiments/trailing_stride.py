"""Experiment: what diffusers' DDIM / PLMS stride costs fewer-steps runs with trailing spacing.

diffusers' DDIM and PLMS step from t to ``t - 1000 // n``; with trailing spacing the run's timesteps are
that far apart only where n divides 1000 (``cachediff.stepping``). This samples each step count on the
same seeds twice, as diffusers steps and stepping to the run's next timestep (``follow_timesteps``),
and prints the mean per-image PSNR of both to the converged solution of the same noise, with intervals.

Example (2026-12-07; docs/PLANNING.md quotes what it printed):
    python experiments/trailing_stride.py --model_type tiny-sd --steps 25 24 33 16 50 12 11 --images 32 \
        --converged runs/validate/plms-50-trailing/evaluation --converged-images 500 \
        --out runs/trailing-stride
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cachediff import generation, loading, scoring
from cachediff.pipelines import PRESETS, get_preset
from cachediff.prompts import load_prompts
from cachediff.reference import Converged
from cachediff.rows import Setting
from cachediff.stepping import follow_timesteps
from cachediff.sweep import Sweep


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_type", default="tiny-sd", choices=list(PRESETS), help="model preset")
    p.add_argument("--scheduler", help="DDIMScheduler or PNDMScheduler (default: the preset's)")
    p.add_argument("--steps", type=int, nargs="+", required=True, help="step counts to sample")
    p.add_argument("--images", type=int, default=32, help="images (seeds 0..N-1) per step count")
    p.add_argument("--batch", type=int, default=16, help="images per pipeline call")
    p.add_argument("--converged", type=Path, help="folder of the converged reference (default: OUT)")
    p.add_argument("--converged-steps", type=int, help="steps of the fine solve (default: the reference's)")
    p.add_argument(
        "--converged-images",
        type=int,
        help="images the --converged folder holds, in shards of 100 (default: --images)",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the samples")
    args = p.parse_args(argv)
    args.converged_images = args.converged_images or args.images
    if min(args.images, args.batch, *args.steps) < 1 or args.converged_images < args.images:
        p.error("--images, --batch and every --steps must be >= 1, and --converged-images >= --images")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    preset = get_preset(args.model_type)
    pipe = loading.load_pipeline(preset, None, "cpu")
    loading.set_scheduler(pipe, args.scheduler or preset.scheduler, "trailing")
    inputs, prompts = generation.default_inputs(pipe, preset.task, None, None), None
    if preset.takes_prompt:
        prompts = load_prompts(preset.prompts)
        inputs |= loading.guidance(preset.model_path(None))
    common = dict(task=preset.task, prompts=prompts, batch=args.batch, **inputs)
    folder = args.converged or args.out
    n = args.converged_images
    converged = Converged(pipe, folder, n, args.converged_steps, min(n, 100), **common)
    reference = converged.images(args.images)
    print(f"{type(pipe.scheduler).__name__}, trailing; fidelity to {converged.describe()}")
    for follow in (False, True):
        if follow:
            follow_timesteps(pipe.scheduler)
        sweep = Sweep(
            pipe, args.out / ("follow" if follow else "diffusers"), args.images, args.images, **common
        )
        for steps in args.steps:
            f = scoring.fidelity(sweep.first(Setting(f"steps-{steps}", steps)), reference)
            how = "to the next timestep" if follow else "diffusers' stride   "
            print(
                f"{how} {steps:4d} steps: {f['psnr_mean_db']:.2f} "
                f"[{f['psnr_mean_db_lo']:.2f}, {f['psnr_mean_db_hi']:.2f}] dB",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
