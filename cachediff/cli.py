"""The command line shared by ``main.py`` and the per-model scripts: baseline and DeepCache back to back.

Each script passes the model types it serves; everything else (flags, errors, outputs) is here.
Outputs go to ``--output``: a side-by-side PNG (left baseline, right DeepCache, same seeds; video
frames in rows), GIFs for videos, and ``run.json`` with the resolved configuration, the results and
library versions.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import torch

from . import files, generation, launch, loading, plan, stepping
from .accelerators import accelerator
from .comparison import Comparison, compare
from .config import FORECAST_TIMES, DeepCacheConfig
from .metrics.class_score import class_score_of_prompts, load_classifier
from .modules import ModuleCache, denoiser
from .pipelines import PRESETS, get_preset
from .prompts import load_prompts

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: diffusers' timestep spacings (``leading``: SD 1.5's and the paper's; ``trailing``: every step count
#: starts at the last training timestep)
SPACINGS = ("leading", "trailing", "linspace")
#: The help of ``--follow-timesteps`` (``--follow_timesteps`` here).
FOLLOW_HELP = (
    "DDIM and PLMS: step to the run's next timestep, not diffusers' t - 1000 // steps, which misses it "
    "under trailing or linspace spacing when the steps do not divide 1000 (docs/PLANNING.md)"
)


def parse_args(
    argv=None, doc: str = __doc__, model_types=tuple(PRESETS), default: str = "tiny-sd", refine=False
) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_type", default=default, choices=list(model_types), help="model preset")
    p.add_argument("--model", help="hub id or local folder overriding the preset's weights")
    p.add_argument("--steps", type=int, help="inference steps (default: the preset's)")
    p.add_argument("--cache_interval", type=int, help="cache interval N (default: the preset's)")
    p.add_argument(
        "--cache_branch_id", type=int, help="U-Net skip branch id b, paper branch b+1 (default: preset's)"
    )
    p.add_argument(
        "--shallow_blocks",
        type=int,
        help="DiT (pixart): blocks at each end that run on every step (default: preset's)",
    )
    p.add_argument(
        "--schedule",
        default="uniform",
        choices=["uniform", "non-uniform", "adaptive"],
        help="full-step schedule (adaptive: ceil(T/N) full steps where the shallow feature drifts most)",
    )
    p.add_argument(
        "--reuse", default="cache", choices=["cache", "forecast", "zeros"], help="what cached steps feed "
        "the shallow branch: the last full step's deep feature (DeepCache), a forecast from the last "
        "--order full steps, or zeros (the paper's ablation)",
    )  # fmt: skip
    p.add_argument("--order", type=int, help="--reuse forecast: full steps it extrapolates from (default 2)")
    p.add_argument(
        "--forecast_time", choices=FORECAST_TIMES, help="--reuse forecast: the variable it extrapolates in "
        "(default timestep), or 'shallow': weights fitted per image to the cached step's shallow feature, "
        "or 'anchored': that fit, reproducing the timestep (docs/SOLVERS.md)",
    )  # fmt: skip
    p.add_argument(
        "--fallback", action="store_true", help="--reuse forecast: replay where the shallow feature "
        "extrapolates worse than it replays (docs/SCHEDULES.md)",
    )  # fmt: skip
    p.add_argument(
        "--cache_phases", nargs="+", type=phase, metavar="START:BRANCH", help="per-phase cuts: from step "
        "START (an int, or a fraction of the run such as 0.5) cached steps cut at BRANCH instead of "
        "--cache_branch_id (docs/SOLVERS.md)",
    )  # fmt: skip
    p.add_argument(
        "--no_refresh", action="store_true", help="--cache_phases: keep each cut's deep feature from full "
        "steps only, not from cached steps cut deeper, which also run its modules (docs/SOLVERS.md)",
    )  # fmt: skip
    p.add_argument("--scheduler", help="diffusers scheduler class, e.g. DDIMScheduler (default: preset's)")
    p.add_argument(
        "--timestep_spacing", choices=SPACINGS, help="the scheduler's timestep spacing (default: the "
        "model's; SD 1.5's and the tiny SD's leading starts n steps at t = 1 + (n - 1) * floor(1000 / n), "
        "trailing every step count at t = 999)",
    )  # fmt: skip
    p.add_argument("--follow_timesteps", action="store_true", help=FOLLOW_HELP)
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weights and compute dtype")
    p.add_argument(
        "--batch_size",
        type=int,
        help=f"images per run, seeds seed..seed+B-1 (default: the preset's: {_batches()})",
    )
    p.add_argument(
        "--prompt", help="text prompt of every image (default: the preset's prompt set, cycled over seeds: "
        "tiny-sd one per class, others 'a photograph of an astronaut riding a horse')",
    )  # fmt: skip
    p.add_argument(
        "--guidance_scale", type=float, help="classifier-free guidance scale (default: the model folder's "
        "prompts.json, else the pipeline's 7.5)",
    )  # fmt: skip
    p.add_argument("--image", help="init image for img2img, inpainting and video (default: a gradient)")
    p.add_argument("--mask", help="inpainting mask, white = repaint (default: the centre square)")
    p.add_argument("--frames", type=int, default=14, help="video frames (SVD, Text2Video-Zero)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats of each run, after one warm-up")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--output", type=Path, default=Path("outputs/main"), help="output folder")
    p.add_argument(
        "--plan", type=float, nargs="+", metavar="SPEEDUP", help="instead of one comparison, plan: for each "
        "speedup budget (e.g. 2 3), the candidates (fewer steps; interval x branch x schedule x act at "
        "--steps) scored by PSNR to the converged solution on calibration seeds, the front timed, the pick "
        "(plan.json, plan.csv, plan.png in --output; docs/PLANNING.md)",
    )  # fmt: skip
    p.add_argument("--plan_by", default="macs", choices=["macs", "time"], help="--plan: a budget of MAC "
                   "speedup, or of measured speedup on this device")  # fmt: skip
    p.add_argument("--calibration_images", type=int, default=32, help="--plan: calibration seeds scored")
    p.add_argument(
        "--converged_steps", type=int, help="--plan: steps of the fine solve that fidelity is measured "
        "against (default: 200 of DPM-Solver++ 2M with trailing spacing; 1000 of DDIM for DDIM pipelines)",
    )  # fmt: skip
    if refine:
        p.add_argument("--refine", action="store_true", help="finish with the SDXL refiner (last 20%%)")
        p.add_argument(
            "--refiner",
            default="stabilityai/stable-diffusion-xl-refiner-1.0",
            help="refiner hub id or folder",
        )
    args = p.parse_args(argv)
    counts = (
        args.batch_size,
        args.repeats,
        args.frames,
        args.steps,
        args.calibration_images,
        args.converged_steps,
    )
    if min(c for c in counts if c is not None) < 1:
        p.error(
            "--batch_size, --repeats, --frames, --steps, --calibration_images and --converged_steps "
            "must be >= 1"
        )
    if args.plan and not all(math.isfinite(b) and b > 1 for b in args.plan):
        p.error(f"--plan takes speedups > 1 (e.g. 2 for twice as fast), got {' '.join(map(str, args.plan))}")
    if args.shallow_blocks is not None and args.shallow_blocks < 0:
        p.error("--shallow_blocks must be >= 0")
    if not finite_scale(args.guidance_scale):
        p.error(f"--guidance_scale must be a finite number >= 0, got {args.guidance_scale}")
    return args


def finite_scale(value: float | None) -> bool:
    """Whether a guidance scale is absent or a finite number >= 0 (``nan`` means no guidance to
    diffusers, silently).

    Example:
        >>> finite_scale(None), finite_scale(4.0), finite_scale(float("nan")), finite_scale(-1.0)
        (True, True, False, False)
    """
    return value is None or (math.isfinite(value) and value >= 0)


def check_conditioning(args, preset, pipe) -> None:
    """Refuse flags that the model would ignore: a prompt or guidance scale for a model that takes
    none, ``--shallow_blocks`` for a U-Net (which takes ``--cache_branch_id``)."""
    if not preset.takes_prompt and (args.prompt is not None or args.guidance_scale is not None):
        raise ValueError(
            f"{args.model_type} makes {preset.task} samples and takes no --prompt or --guidance_scale"
        )
    if args.shallow_blocks is not None and getattr(pipe, "unet", None) is not None:
        raise ValueError("--shallow_blocks is for DiT models (pixart); a U-Net takes --cache_branch_id")


def _batches() -> str:
    """The presets' default batch sizes, as ``--batch_size``'s help states them."""
    sizes = [f"{name} {p.batch}" for name, p in PRESETS.items() if p.batch != 1]
    return ", ".join([*sizes, "others 1"])


def main(argv=None, **script) -> int:
    """Parse flags (``script``: ``doc``, ``model_types``, ``default``, ``refine``), run, exit status."""
    return exit_status(run, parse_args(argv, **script))


def exit_status(run, args, errors=(ValueError, TypeError, FileNotFoundError)) -> int:
    """``run(args)``'s exit status; bad input (``errors``) is one line on stderr and status 2, no
    traceback. Every script's ``main`` ends here."""
    try:
        return run(args)
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def phase(text: str) -> tuple[float | int, int]:
    """``START:BRANCH`` as ``(start, branch)``: an int start is a step, one with a point a fraction.

    Example:
        >>> phase("0.5:2"), phase("12:0")
        ((0.5, 2), (12, 0))
    """
    start, _, branch = text.partition(":")
    try:
        return (float(start) if "." in start else int(start)), int(branch)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:BRANCH such as 0.5:2, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    launch.check_device(args.device)
    files.output_folder(args.output)  # fails now, not after the runs
    preset = get_preset(args.model_type)
    steps = args.steps or preset.steps
    args.batch_size = args.batch_size or preset.batch
    config = DeepCacheConfig(
        interval=preset.interval if args.cache_interval is None else args.cache_interval,
        branch=preset.branch if args.cache_branch_id is None else args.cache_branch_id,
        schedule=args.schedule,
        reuse=args.reuse,
        order=args.order,
        time=args.forecast_time,
        fallback=True if args.fallback else None,
        phases=args.cache_phases and tuple(args.cache_phases),
        refresh=False if args.no_refresh else None,
    )
    shallow = preset.shallow_blocks if args.shallow_blocks is None else args.shallow_blocks
    dtype = DTYPES[args.dtype]
    pipe = loading.load_pipeline(preset, args.model, args.device, dtype)
    check_conditioning(args, preset, pipe)
    loading.set_scheduler(
        pipe, args.scheduler or preset.scheduler, args.timestep_spacing, follow=args.follow_timesteps
    )
    if args.plan:
        return run_plan(args, preset, pipe, steps)
    engines = [accelerator(pipe, config, steps, shallow)]  # fails before any sampling on a bad branch
    seeds = list(range(args.seed, args.seed + args.batch_size))
    print(
        f"{args.model_type}: {steps} steps, N={config.interval}; {engines[0].describe(steps).splitlines()[0]}"
    )
    inputs = generation.default_inputs(pipe, preset.task, args.image, args.mask)
    video = preset.task in ("video", "text2video")
    if video:
        inputs["frames"] = args.frames
    prompts = None
    if preset.takes_prompt:
        inputs["prompt"] = prompts = _prompts(args.prompt, preset, len(seeds))
        inputs |= loading.guidance(preset.model_path(args.model), args.guidance_scale)
    if getattr(args, "refine", False):
        refiner = loading.load_pipeline(get_preset("sdxl-img2img"), args.refiner, args.device, dtype)
        inputs["refiner"] = refiner
        engines.append(accelerator(refiner, config, steps, shallow))
    result, base, cached = compare(pipe, engines, seeds, steps, args.repeats, preset.task, **inputs)

    scores = _class_scores(preset, prompts, base, cached)

    args.output.mkdir(parents=True, exist_ok=True)
    picture = args.output / "baseline_vs_deepcache.png"
    if video:  # frames in rows, one GIF per run (first video)
        files.save_png(picture, files.side_by_side(base, cached, rows=args.batch_size))
        files.save_gif(args.output / "baseline.gif", base[: args.frames])
        files.save_gif(args.output / "deepcache.gif", cached[: args.frames])
    else:  # a baseline row above a DeepCache row, columns labelled with their prompts or seeds
        labels = prompts or [f"seed {s}" for s in seeds]
        rows = {"baseline\n(uncached)": base, setting_label(config, engines[0], result.psnr_db): cached}
        files.save_png(picture, files.labelled_grid(rows, labels))
    record = dict(
        args=vars(args),
        preset=preset.__dict__,
        config=config.__dict__,
        scheduler=dict(sampler=type(pipe.scheduler).__name__, stepping=stepping.mode(pipe.scheduler)),
        inputs={k: v for k, v in inputs.items() if k in ("prompt", "guidance_scale", "strength", "frames")},
        results=dataclasses.asdict(result) | scores,
        env=files.environment(),
    )
    files.write_json(args.output / "run.json", record)
    print_table(result, scores, act_name(config))
    print(f"saved {picture} (baseline row above the DeepCache row; videos: left and right) and run.json")
    return 0


def run_plan(args, preset, pipe, steps: int) -> int:
    """``--plan``: the planner at each budget on the calibration seeds; tables printed, files saved."""
    if getattr(pipe, "unet", None) is None:
        raise ValueError(f"--plan needs a U-Net; {args.model_type} has a {type(denoiser(pipe)).__name__}")
    inputs = generation.default_inputs(pipe, preset.task, args.image, args.mask)
    prompts = None
    if preset.takes_prompt:
        prompts = [args.prompt] if args.prompt is not None else load_prompts(preset.prompts)
        inputs |= loading.guidance(preset.model_path(args.model), args.guidance_scale)
    planner = plan.Planner(pipe, args.output, steps, preset.task, prompts, args.calibration_images,
                           args.converged_steps, repeats=args.repeats, batch=args.batch_size,
                           **inputs)  # fmt: skip
    reference = planner.converged.describe()
    print(f"{args.model_type}: {steps} steps of {type(pipe.scheduler).__name__} "
          f"({pipe.scheduler.config.get('timestep_spacing')} spacing); fidelity to {reference}")  # fmt: skip
    plans = [planner.plan(b, args.plan_by) for b in args.plan]
    for p in plans:
        print(f"\n{p.table()}")
    first = plan.CALIBRATION_SEED
    about = dict(model_type=args.model_type, steps=steps, sampler=type(pipe.scheduler).__name__,
                 spacing=pipe.scheduler.config.get("timestep_spacing"),
                 stepping=stepping.mode(pipe.scheduler), converged=reference,
                 calibration_seeds=[first, first + args.calibration_images - 1],
                 env=files.environment())  # fmt: skip
    plan.save(plans, args.output, about)
    print(f"saved {args.output / 'plan.json'}, plan.csv and plan.png")
    return 0


def _prompts(prompt: str | None, preset, n: int) -> list[str]:
    """``prompt`` for every image, or the preset's prompt set cycled over ``n`` images."""
    if prompt is not None:
        return [prompt] * n
    prompts = load_prompts(preset.prompts)
    return [prompts[k % len(prompts)] for k in range(n)]


def _class_scores(preset, prompts: list[str] | None, base: torch.Tensor, cached: torch.Tensor) -> dict:
    """Class score and top-1 accuracy of both runs, where the preset's images can be classified and
    every prompt names one class; else nothing."""
    if not preset.class_score or not prompts:
        return {}
    model = load_classifier()
    scores = {
        name: class_score_of_prompts(images, prompts, model)
        for name, images in (("baseline", base), ("deepcache", cached))
    }
    if None in scores.values():  # a prompt that names no class, or two
        return {}
    return {
        f"{name}_class_{k}": v
        for name, s in scores.items()
        for k, v in zip(("score", "accuracy"), s, strict=True)
    }


def act_name(config: DeepCacheConfig) -> str:
    """What a cached step hands the shallow branch, in words.

    Example:
        >>> act_name(DeepCacheConfig(5)), act_name(DeepCacheConfig(5, reuse="forecast", order=3))
        ('replay', 'forecast 3')
        >>> act_name(DeepCacheConfig(5, reuse="forecast", time="lambda"))
        'forecast 2 in lambda'
    """
    if config.reuse != "forecast":
        return {"cache": "replay", "zeros": "zeros (ablation)"}[config.reuse]
    return f"forecast {config.order}" + ("" if config.time == "timestep" else f" in {config.time}")


def setting_label(config: DeepCacheConfig, cache, psnr_db: float) -> str:
    """The cached row's label in the grid: N, the cut, the schedule, the act and the PSNR.

    Example:
        >>> print(setting_label(DeepCacheConfig(5, 1), object(), 32.71))
        DeepCache N = 5
        branch 1 (paper 2)
        uniform, replay
        PSNR 32.7 dB
    """
    cut = f"branch {config.branch} (paper {config.branch + 1})"
    if isinstance(cache, ModuleCache):  # a DiT: its blocks, not a U-Net branch
        cut = "middle DiT blocks"
    lines = [f"DeepCache N = {config.interval}", cut, f"{config.schedule}, {act_name(config)}"]
    return "\n".join([*lines, f"PSNR {psnr_db:.1f} dB"])


def print_table(r: Comparison, scores: dict | None = None, act: str = "replay") -> None:
    rows = [
        ("what cached steps reuse", "-", act),
        ("wall time per run (median)", f"{r.baseline_seconds:.2f} s", f"{r.deepcache_seconds:.2f} s"),
        ("speedup (measured)", "1.00x", f"{r.speedup:.2f}x"),
        ("MACs per step: full / cached", f"{r.macs_full / 1e6:.1f} M", f"{r.macs_cached / 1e6:.1f} M"),
        ("MACs per step: average", f"{r.macs_full / 1e6:.1f} M", f"{r.macs_average / 1e6:.1f} M"),
        ("speedup bound from MACs", "1.00x", f"{r.mac_speedup_bound:.2f}x"),
        ("full steps", f"{r.steps} / {r.steps}", f"{r.n_full} / {r.steps}"),
        ("fidelity to baseline (PSNR)", "-", f"{r.psnr_db:.1f} dB [{r.psnr_db_lo:.1f}, {r.psnr_db_hi:.1f}]"),
        ("MSE to baseline", "-", f"{r.mse:.2e}"),
    ]
    if scores:
        score = "{:.3f} (top-1 {:.0%})".format
        rows.append((
            "class score (top-1 accuracy)",
            score(scores["baseline_class_score"], scores["baseline_class_accuracy"]),
            score(scores["deepcache_class_score"], scores["deepcache_class_accuracy"]),
        ))  # fmt: skip
    print(f"\n| {'':30s} | {'baseline':>18s} | {'DeepCache':>24s} |")
    for name, a, b in rows:
        print(f"| {name:30s} | {a:>18s} | {b:>24s} |")
