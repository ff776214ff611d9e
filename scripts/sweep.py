"""Sweep any model type over cache interval x branch x schedule, plus fewer-steps baselines: one CSV
row per setting, written atomically.

Each row holds the denoiser MACs per image, the MAC bound and the measured speedup over the uncached
baseline, PSNR to the baseline's images (same seeds and prompts), and on request the CLIP score
(``--clip``, text-conditioned models) and FID (``--fid-reference``). Image k comes from seed k and
prompt k, saved per shard of seeds: an interrupted sweep resumes without redoing finished settings or
shards, and under a launcher (``torchrun`` or ``accelerate launch``) the processes share the shards,
writing the same files as one process would; process 0 then scores and times everything.

Example:
    python scripts/sweep.py --model_type ddpm-mnist --samples 64 --intervals 2 5 --branches 1 2 \\
        --schedules uniform adaptive --fewer-steps 60 --fid-reference mnist
    torchrun --standalone --nproc_per_node 2 scripts/sweep.py --model_type sd1.5 --model /w/sd-v1-5 \\
        --prompts coco --samples 5000 --intervals 2 3 5 --branches 0 1 2 --clip /w/clip-vit-g-14
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

import numpy as np
import torch

from cachediff import DeepCacheConfig, generation, metrics
from cachediff.accelerators import accelerator
from cachediff.cli import DTYPES
from cachediff.files import read_csv, update_csv
from cachediff.metrics import clip_score as C
from cachediff.metrics import fid as F
from cachediff.pipelines import PRESETS, get_preset
from cachediff.prompts import load_prompts
from cachediff.sweep import Setting, Sweep, speed

TEXT_TASKS = ("text2image", "img2img", "inpaint", "text2video")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_type", default="ddpm-mnist", choices=list(PRESETS), help="model preset")
    p.add_argument("--model", help="hub id or local folder overriding the preset's weights")
    p.add_argument("--steps", type=int, help="inference steps of every cached setting (default: preset's)")
    p.add_argument("--intervals", type=int, nargs="+", help="cache intervals N (default: preset's)")
    p.add_argument("--branches", type=int, nargs="+", help="branch ids (default: the preset's)")
    p.add_argument(
        "--schedules", nargs="+", default=["uniform"], choices=["uniform", "non-uniform", "adaptive"],
        help="full-step schedules",
    )  # fmt: skip
    p.add_argument("--fewer-steps", type=int, nargs="*", default=[], help="uncached runs with fewer steps")
    p.add_argument("--samples", type=int, default=16, help="images per setting (seeds 0..samples-1)")
    p.add_argument("--shard", type=int, default=4, help="images per generated batch and file")
    p.add_argument("--prompts", default="builtin", help="prompt set: builtin, coco, parti, a file or URL")
    p.add_argument("--image", help="init image for img2img, inpainting and video (default: a gradient)")
    p.add_argument("--mask", help="inpainting mask, white = repaint (default: the centre square)")
    p.add_argument("--frames", type=int, default=14, help="video frames (SVD, Text2Video-Zero)")
    p.add_argument(
        "--clip", help="CLIP weights for the CLIP score: an open_clip file or tag (laion2b_s34b_b88k, the "
        "paper's), or a transformers folder or hub id",
    )  # fmt: skip
    p.add_argument("--clip-arch", default="ViT-g-14", help="open_clip architecture of --clip (the paper's)")
    p.add_argument("--fid-reference", help="FID reference statistics (.npz) or 'mnist' (MNIST test set)")
    p.add_argument("--timing-images", type=int, default=2, help="images per timed run")
    p.add_argument("--repeats", type=int, default=2, help="interleaved timed repeats (0: no timing)")
    p.add_argument("--scheduler", help="diffusers scheduler class (default: the preset's)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weights and compute dtype")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, default=Path("runs/sweep"), help="samples, stats and results.csv")
    args = p.parse_args(argv)
    counts = [args.samples, args.shard, args.frames, args.timing_images, *args.fewer_steps]
    counts += [*(args.intervals or []), args.steps or 1]
    if min(counts) < 1 or args.repeats < 0 or min(args.branches or [0]) < 0:
        p.error("counts, steps and intervals must be >= 1; --repeats and --branches >= 0")
    return args


def grid(args, preset) -> list[Setting]:
    """The uncached baseline first, then every cached setting, then the fewer-steps runs."""
    steps = args.steps or preset.steps
    out = [Setting(f"base-{steps}", steps)]
    intervals, branches = args.intervals or [preset.interval], args.branches or [preset.branch]
    for n, b, schedule in itertools.product(intervals, branches, args.schedules):
        config = DeepCacheConfig(interval=n, branch=b, schedule=schedule)
        out.append(Setting(f"N{n}-b{b}-{schedule}", steps, config))
    out += [Setting(f"steps-{k}", k) for k in args.fewer_steps if k != steps]
    return out


def launcher() -> tuple[int, int]:
    """This process's rank and the number of processes (torchrun and accelerate set both)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return rank, world


def fid_reference(source: str, out: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reference statistics: an ``.npz`` of ``mu`` and ``sigma``, or the MNIST test set's."""
    if source == "mnist":
        return F.mnist_reference(out / "reference_mnist_test_2000.npz")
    return F.load_stats(Path(source))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = get_preset(args.model_type)
    if args.fid_reference not in (None, "mnist") and not Path(args.fid_reference).is_file():
        raise FileNotFoundError(f"no FID reference statistics {args.fid_reference!r} (.npz or 'mnist')")
    pipe = generation.load_pipeline(preset, args.model, args.device, DTYPES[args.dtype])
    generation.set_scheduler(pipe, args.scheduler or preset.scheduler)
    settings = grid(args, preset)
    for s in settings[1:]:  # bad branches and schedules fail before any sampling
        if s.cache is not None:
            accelerator(pipe, s.cache, s.steps)
    inputs = generation.default_inputs(pipe, preset.task, args.image, args.mask)
    if preset.task in ("video", "text2video"):
        inputs["frames"] = args.frames
    prompts = load_prompts(args.prompts, args.samples) if preset.task in TEXT_TASKS else None
    inception = F.load_inception(args.device) if args.fid_reference else None
    featurize = inception and (lambda x: F.inception_features(x.to(args.device), inception, 50, False))
    sweep = Sweep(pipe, args.out, args.samples, args.shard, featurize, preset.task, prompts, **inputs)

    rank, world = launcher()
    for s in settings:
        sweep.generate_missing(s, rank, world)
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        score(args, sweep, settings, prompts)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def score(args, sweep: Sweep, settings: list[Setting], prompts: list[str] | None) -> None:
    """One row per setting not in the CSV yet, written as soon as it is done."""
    csv = args.out / "results.csv"
    done = {r["setting"] for r in read_csv(csv)}
    base = settings[0]
    base_macs, base_images = sweep.macs_per_image(base), sweep.images(base)
    reference = fid_reference(args.fid_reference, args.out) if args.fid_reference else None
    clip = C.load_clip(args.clip, args.clip_arch, args.device) if args.clip else None
    for s in settings:
        if s.name in done:
            continue
        config, images = s.cache or DeepCacheConfig(interval=1), sweep.images(s)
        macs = sweep.macs_per_image(s)
        row = dict(
            setting=s.name,
            method=s.cache.schedule if s.cache else "uncached" if s == base else "fewer steps",
            steps=s.steps,
            interval=config.interval,
            branch=config.branch,
            schedule=config.schedule,
            full_steps=sweep.mean_full_steps(s),
            gmacs_per_image=macs / 1e9,
            mac_speedup=base_macs / macs,
            psnr_db=metrics.psnr(images, base_images) if s.steps == base.steps else float("nan"),
            samples=args.samples,
        )
        if args.repeats:
            row.update(speed(sweep, base, s, args.timing_images, args.repeats))
        if reference is not None:
            row["fid"] = F.frechet_distance(*F.feature_stats(sweep.features(s)), *reference)
        if clip is not None and prompts is not None:
            texts = [prompts[k % len(prompts)] for k in range(len(images))]
            row["clip_score"] = C.clip_score(images, texts, clip).mean().item()
        update_csv(csv, row)
        print(row, flush=True)
    print(f"wrote {csv}")


if __name__ == "__main__":
    sys.exit(main())
