"""Run a model without and with DeepCache, back to back, and report speed, MACs and fidelity.

The default is the MNIST DDPM trained here and shipped in ``assets/ddpm-mnist`` (100 DDIM steps, the
paper's DDPM setting). Other ``--model_type``s load their weights from ``--model`` (a local folder or a
hub id). Outputs go to ``--output``: a side-by-side PNG (left baseline, right DeepCache, same seeds;
video frames in rows) and a JSON with the resolved configuration, the results and library versions.

Example:
    python main.py
    python main.py --cache_interval 10 --cache_branch_id 0 --batch_size 32
    python main.py --model_type sd1.5 --model /weights/sd-v1-5 --prompt "a red fox" --batch_size 1
    python main.py --model_type svd --model /weights/svd-xt --image input.png --frames 14
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cachediff import DeepCacheConfig, branch_plan, runner
from cachediff.pipelines import PRESETS, get_preset


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_type", default="ddpm-mnist", choices=list(PRESETS), help="model preset")
    p.add_argument("--model", help="hub id or local folder overriding the preset's weights")
    p.add_argument("--steps", type=int, help="inference steps (default: the preset's)")
    p.add_argument("--cache_interval", type=int, help="cache interval N (default: the preset's)")
    p.add_argument(
        "--cache_branch_id", type=int, help="skip branch id b, paper branch b+1 (default: preset's)"
    )
    p.add_argument(
        "--schedule", default="uniform", choices=["uniform", "non-uniform"], help="full-step schedule"
    )
    p.add_argument("--batch_size", type=int, default=16, help="images per run (seeds seed..seed+B-1)")
    p.add_argument("--prompt", default="a photograph of an astronaut riding a horse", help="text prompt")
    p.add_argument("--image", help="init image for img2img, inpainting and video (default: a gradient)")
    p.add_argument("--mask", help="inpainting mask, white = repaint (default: the centre square)")
    p.add_argument("--frames", type=int, default=14, help="video frames (SVD)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats of each run, after one warm-up")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--output", type=Path, default=Path("outputs/main"), help="output folder")
    args = p.parse_args(argv)
    if min(args.batch_size, args.repeats, args.frames, args.steps or 1) < 1:
        p.error("--batch_size, --repeats, --frames and --steps must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (ValueError, TypeError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    preset = get_preset(args.model_type)
    steps = args.steps or preset.steps
    config = DeepCacheConfig(
        interval=preset.interval if args.cache_interval is None else args.cache_interval,
        branch=preset.branch if args.cache_branch_id is None else args.cache_branch_id,
        schedule=args.schedule,
    )
    pipe = runner.load_pipeline(preset, args.model, args.device)
    branch_plan(pipe.unet, config.branch)  # fail before any sampling if the branch is out of range
    seeds = list(range(args.seed, args.seed + args.batch_size))
    branch = f"branch {config.branch} (paper {config.branch + 1})"
    print(f"{args.model_type}: {steps} steps, N={config.interval}, {branch}")
    inputs = runner.default_inputs(pipe, preset.task, args.image, args.mask)
    if preset.task == "video":
        inputs["frames"] = args.frames
    elif preset.task != "unconditional":
        inputs["prompt"] = args.prompt
    result, base, cached = runner.compare(pipe, config, seeds, steps, args.repeats, preset.task, **inputs)

    args.output.mkdir(parents=True, exist_ok=True)
    rows = args.batch_size if preset.task == "video" else min(4, args.batch_size)
    runner.save_png(args.output / "baseline_vs_deepcache.png", runner.side_by_side(base, cached, rows=rows))
    record = dict(
        args=vars(args), config=config.__dict__, results=runner.as_dict(result), env=runner.environment()
    )
    runner.write_json(args.output / "run.json", record)
    print_table(result)
    print(
        f"saved {args.output / 'baseline_vs_deepcache.png'} (left: baseline, right: DeepCache) and run.json"
    )
    return 0


def print_table(r: runner.Comparison) -> None:
    rows = [
        ("wall time per run (median)", f"{r.baseline_seconds:.2f} s", f"{r.deepcache_seconds:.2f} s"),
        ("speedup (measured)", "1.00x", f"{r.speedup:.2f}x"),
        ("MACs per step: full / cached", f"{r.macs_full / 1e6:.1f} M", f"{r.macs_cached / 1e6:.1f} M"),
        ("MACs per step: average", f"{r.macs_full / 1e6:.1f} M", f"{r.macs_average / 1e6:.1f} M"),
        ("speedup bound from MACs", "1.00x", f"{r.mac_speedup_bound:.2f}x"),
        ("full steps", f"{r.steps} / {r.steps}", f"{r.full_steps} / {r.steps}"),
        ("fidelity to baseline (PSNR)", "-", f"{r.psnr_db:.1f} dB (MSE {r.mse:.2e})"),
    ]
    print(f"\n| {'':30s} | {'baseline':>12s} | {'DeepCache':>24s} |")
    for name, a, b in rows:
        print(f"| {name:30s} | {a:>12s} | {b:>24s} |")


if __name__ == "__main__":
    sys.exit(main())
