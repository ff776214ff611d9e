"""The research sweep: a model type over suites of caching settings (``cachediff.suites``), samples on
disk by seed, then one CSV row per setting in one schema (``cachediff.rows.COLUMNS``).

Stages (``--stage``): ``generate`` writes the samples (image k from seed k and prompt k, per shard
of seeds; under ``torchrun`` or ``accelerate launch`` the processes share the shards and write the
files one process would), ``score`` adds a row for every setting not in the CSV yet (parameters,
full calls, MACs and MAC bound, PSNR to the baseline, FID with ``--fid-reference``, CLIP score with
``--clip``, class score on the tiny SD, measured speedup with ``--repeats``), ``all`` does both.
Everything resumes: finished shards, features and rows are kept, and every file is written atomically.

Examples:
    python scripts/sweep.py --model_type ddpm-mnist --suites interval zeros steps curve schedules branch \\
        --samples 2000 --shard 250 --batch 32 --fid-reference mnist --timing-images 32 --out runs/mnist-sweep
    python scripts/sweep.py --model_type ddpm-mnist --suites grid curve --intervals 2 5 --branches 1 2 \\
        --schedules uniform adaptive --curve 60 --samples 64 --fid-reference mnist
    torchrun --standalone --nproc_per_node 2 scripts/sweep.py --model_type sd1.5 --model /w/sd-v1-5 \\
        --prompts coco --samples 5000 --intervals 2 3 5 --branches 0 1 2 --clip /w/clip-vit-g-14
"""

from __future__ import annotations

import argparse
import datetime
import fnmatch
import platform
import sys
from pathlib import Path

import torch

from cachediff import generation, launch, loading, stepping, suites
from cachediff.accelerators import accelerator
from cachediff.cli import DTYPES, FOLLOW_HELP, SPACINGS, exit_status, finite_scale
from cachediff.files import claim, output_folder, read_csv, release, update_csv
from cachediff.metrics import clip_score as C
from cachediff.metrics import fid as F
from cachediff.metrics.class_score import labels_of_prompts, load_classifier
from cachediff.pipelines import PRESETS, get_preset
from cachediff.prompts import load_prompts
from cachediff.reference import Converged
from cachediff.rows import COLUMNS, Setting, is_missing, rescore_reason
from cachediff.scoring import REFERENCES, reference_stats, row, speed
from cachediff.sweep import Sweep
from cachediff.unets import num_branches

#: scheduler class -> the sampler's short name in setting names
SAMPLERS = {
    "DDIMScheduler": "ddim",
    "PNDMScheduler": "plms",
    "DPMSolverMultistepScheduler": "dpmpp",
    "EulerDiscreteScheduler": "euler",
    "UniPCMultistepScheduler": "unipc",
}


def parse_args(argv=None) -> argparse.Namespace:
    plan = suites.Plan()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_type", default="ddpm-mnist", choices=list(PRESETS), help="model preset")
    p.add_argument("--model", help="hub id or local folder overriding the preset's weights")
    p.add_argument(
        "--suites", nargs="+", default=["grid"], choices=list(suites.SUITES), help="which suites to run, in "
        "this order, after the uncached baseline (see cachediff/suites.py)",
    )  # fmt: skip
    p.add_argument("--stage", default="all", choices=["generate", "score", "all"], help="which passes to run")
    p.add_argument("--steps", type=int, help="steps that DeepCache accelerates (default: the preset's)")
    p.add_argument(
        "--baseline-steps", type=int, help="steps of the uncached baseline that costs and PSNR are relative "
        "to (default: --steps)",
    )  # fmt: skip
    p.add_argument("--branch", type=int, help="branch id of the suites, paper branch + 1 (default: preset's)")
    p.add_argument("--intervals", type=int, nargs="+", default=plan.intervals, help="intervals N")
    p.add_argument("--budgets", type=int, nargs="+", default=plan.budgets, help="budgets N (schedules suite)")
    p.add_argument("--curve", type=int, nargs="+", default=plan.curve, help="step counts (curve suite)")
    p.add_argument("--branches", type=int, nargs="+", help="branch ids of the grid suite (default: --branch)")
    p.add_argument(
        "--schedules", nargs="+", default=["uniform"], choices=["uniform", "non-uniform", "adaptive"],
        help="schedules of the grid suite",
    )  # fmt: skip
    p.add_argument(
        "--only", nargs="+", metavar="PATTERN", help="only the settings whose names match one of these "
        "wildcards (e.g. 'ddim-*' 'N10-*'); the baseline always runs",
    )  # fmt: skip
    p.add_argument(
        "--retime", nargs="*", metavar="SETTING", help="measure the speed of these finished settings again "
        "(none named: all), e.g. after other jobs shared the CPU",
    )  # fmt: skip
    p.add_argument("--samples", type=int, default=16, help="images per setting (seeds 0..samples-1)")
    p.add_argument("--shard", type=int, default=4, help="images per saved file (and per unit of work)")
    p.add_argument("--batch", type=int, help="images per pipeline call (default: --shard; small is faster)")
    p.add_argument(
        "--prompts", help="prompt set: builtin, fashion, coco, parti, a file or URL (default: the preset's; "
        "image k gets prompt k modulo the set's size)",
    )  # fmt: skip
    p.add_argument(
        "--guidance-scale", type=float, help="classifier-free guidance scale (default: the model folder's "
        "prompts.json, else the pipeline's)",
    )  # fmt: skip
    p.add_argument("--image", help="init image for img2img, inpainting and video (default: a gradient)")
    p.add_argument("--mask", help="inpainting mask, white = repaint (default: the centre square)")
    p.add_argument("--frames", type=int, default=14, help="video frames (SVD, Text2Video-Zero)")
    p.add_argument(
        "--clip", help="CLIP weights for the CLIP score: an open_clip file or tag (laion2b_s34b_b88k, the "
        "paper's), or a transformers folder or hub id",
    )  # fmt: skip
    p.add_argument("--clip-arch", default="ViT-g-14", help="open_clip architecture of --clip (the paper's)")
    p.add_argument("--fid-reference", help="FID reference: statistics (.npz), 'mnist' or 'fashion-mnist'")
    p.add_argument("--reference-images", type=int, default=2000, help="test images of a named reference")
    p.add_argument("--timing-images", type=int, default=2, help="images per timed run")
    p.add_argument("--repeats", type=int, default=2, help="interleaved timed repeats (0: no timing)")
    p.add_argument("--scheduler", help="diffusers scheduler class (default: the preset's)")
    p.add_argument(
        "--timestep-spacing", choices=SPACINGS, help="the scheduler's timestep spacing (default: the "
        "model's; SD 1.5 and the tiny SD: leading, where n steps start at t = 1 + (n - 1) * floor(1000 / n); "
        "trailing starts every step count at t = 999)",
    )  # fmt: skip
    p.add_argument("--follow-timesteps", action="store_true", help=FOLLOW_HELP)
    p.add_argument(
        "--fidelity-images", type=int, help="first seeds on which fidelity (PSNR and Inception distance to "
        "the baseline, PSNR to the converged solution) is measured (default: --shard)",
    )  # fmt: skip
    p.add_argument(
        "--converged-steps", type=int, default=0, help="also measure PSNR to the converged solution from the "
        "same noise: a DPM-Solver++ 2M solve with trailing spacing over this many steps (DDIM for DDIM "
        "pipelines), e.g. 200; 0: not measured",
    )  # fmt: skip
    p.add_argument(
        "--converged-out", type=Path, help="folder of the converged reference (default: --out); sweeps of "
        "one model, prompts and guidance share it, whatever their sampler",
    )  # fmt: skip
    p.add_argument(
        "--fid-resamples", type=int, default=50, help="bootstrap resamplings of the images for FID's "
        "interval (about 1 s each at 2,048 features; 0: no interval)",
    )  # fmt: skip
    p.add_argument(
        "--scheduler-option", nargs="+", default=[], metavar="KEY=VALUE", help="scheduler config entries, "
        "JSON values (e.g. clip_sample=true)",
    )  # fmt: skip
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weights and compute dtype")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, default=Path("runs/sweep"), help="samples, stats and results.csv")
    p.add_argument(
        "--results", type=Path, help="the CSV of rows (default: OUT/results.csv); a setting with a row there "
        "is not sampled again (but by --stage generate), so a CSV kept in git resumes a sweep whose samples "
        "are gone",
    )  # fmt: skip
    args = p.parse_args(argv)
    args.results = args.results or args.out / "results.csv"
    given = (args.steps, args.baseline_steps, args.batch, args.threads, args.fidelity_images)  # None: default
    counts = [args.samples, args.shard, args.frames, args.timing_images, args.reference_images]
    counts += [*args.intervals, *args.budgets, *args.curve, *(c for c in given if c is not None)]
    if min(counts) < 1 or min(args.repeats, args.converged_steps, args.fid_resamples) < 0:
        p.error("counts, steps, threads and intervals must be >= 1; --repeats, --converged-steps and "
                "--fid-resamples >= 0")  # fmt: skip
    if min([*(args.branches or []), args.branch or 0]) < 0:
        p.error("branches must be >= 0")
    if any("=" not in option for option in args.scheduler_option):
        p.error("--scheduler-option takes KEY=VALUE")
    if not finite_scale(args.guidance_scale):
        p.error(f"--guidance-scale must be a finite number >= 0, got {args.guidance_scale}")
    if args.prompts is not None and not args.prompts.strip():
        p.error("--prompts must name a prompt set: builtin, fashion, coco, parti, a file or a URL")
    if args.retime is not None and args.repeats == 0:
        p.error("--retime measures the speed again: give --repeats >= 1")
    return args


def main(argv=None) -> int:
    return exit_status(run, parse_args(argv))


def load(args, preset):
    """The preset's pipeline with the requested scheduler and scheduler options."""
    pipe = loading.load_pipeline(preset, args.model, args.device, DTYPES[args.dtype])
    loading.set_scheduler(
        pipe, args.scheduler or preset.scheduler, args.timestep_spacing, args.scheduler_option,
        args.follow_timesteps,
    )  # fmt: skip
    return pipe


def run(args) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    launch.check_device(args.device)
    output_folder(args.out)
    preset = get_preset(args.model_type)
    if not preset.takes_prompt and (args.prompts is not None or args.guidance_scale is not None):
        raise ValueError(
            f"{args.model_type} makes {preset.task} samples and takes no --prompts or --guidance-scale"
        )
    if args.fid_reference not in (None, *REFERENCES) and not Path(args.fid_reference).is_file():
        known = ", ".join(REFERENCES)
        raise FileNotFoundError(f"no FID reference statistics {args.fid_reference!r} (.npz or {known})")
    if args.fid_reference not in (None, *REFERENCES):
        F.load_stats(Path(args.fid_reference))  # a file that holds none fails now, not after sampling
    pipe = load(args, preset)
    prompts = None
    inputs = generation.default_inputs(pipe, preset.task, args.image, args.mask)
    if preset.takes_prompt:
        prompts = load_prompts(args.prompts or preset.prompts, args.samples)
        inputs |= loading.guidance(preset.model_path(args.model), args.guidance_scale)
    inception = F.load_inception(args.device) if args.fid_reference else None
    featurize = inception and (lambda x: F.inception_features(x.to(args.device), inception, 50, False))
    if preset.task in ("video", "text2video"):
        inputs["frames"] = args.frames
    sweep = Sweep(
        pipe, args.out, args.samples, args.shard, featurize, preset.task, prompts, args.batch, **inputs
    )
    converged = None
    if args.converged_steps:
        images = min(args.fidelity_images or args.shard, args.samples)
        folder = args.converged_out or args.out
        converged = Converged(pipe, folder, images, args.converged_steps, args.shard, preset.task, prompts,
                              args.batch, **inputs)  # fmt: skip
    settings = plan_settings(args, preset, sweep)
    output_folder(args.results.parent)
    scoring = args.stage in ("score", "all")
    rows = {r["setting"]: r for r in read_csv(args.results)}
    check_rows(rows, pipe, args.results)
    columns = scored_columns(args, preset, prompts)
    reasons = {s.name: rescore_reason(rows.get(s.name), args.samples, columns) for s in settings if scoring}
    with launch.launched() as (rank, world):
        scorer = None
        if rank == 0 and scoring:
            classifier = load_classifier(device=args.device) if preset.class_score else None
            scorer = Scorer(args, sweep, settings[0], prompts, featurize, classifier, converged)
        for s in settings:  # one setting at a time, so that its row lands as soon as its samples do
            if scoring and reasons[s.name] is None:  # its row holds: sample nothing
                if scorer and scorer.wants_timing(rows[s.name]):
                    scorer.retime(s)
                continue
            if scorer and s.name in rows:
                print(f"{s.name}: scoring again, as {reasons[s.name]}", flush=True)
            if args.stage in ("generate", "all"):
                sweep.generate_missing(s, rank, world)
            launch.wait_for_all(world)
            if scorer:
                score_unless_done_elsewhere(scorer, s, args, columns)
        if scorer:
            print(f"wrote {args.results} ({datetime.date.today()} on {platform.machine()}, "
                  f"{torch.get_num_threads()} threads)")  # fmt: skip
    return 0


def score_unless_done_elsewhere(scorer, s: Setting, args, columns) -> None:
    """Score ``s`` unless another sweep on the same folder is scoring it or has written its row since
    this one started (``cachediff.files.claim``)."""
    marker = scorer.sweep.folder(s) / "row"
    if not claim(marker):
        print(f"{s.name}: another sweep is scoring it", flush=True)
        return
    try:
        row = next((r for r in read_csv(args.results) if r["setting"] == s.name), None)
        if rescore_reason(row, args.samples, columns) is not None:
            scorer.score(s)
    finally:
        release(marker)


def check_rows(rows: dict, pipe, path: Path) -> None:
    """Refuse a results CSV whose rows another sampler, timestep spacing or stepping made: a row of
    the same setting name would be taken for this run's and not sampled again (DDIM and PLMS rows from
    before stepping was kept stepped by the stride)."""
    scheduler = pipe.scheduler
    here = dict(
        sampler=type(scheduler).__name__, spacing=scheduler.config.get("timestep_spacing"),
        stepping=stepping.mode(scheduler),
    )  # fmt: skip
    for r in rows.values():
        if is_missing(r.get("stepping")) and here["stepping"] is not None:
            r = dict(r, stepping="stride")
        differ = [k for k, v in here.items() if not is_missing(r.get(k)) and r[k] != v]
        if differ:
            found = ", ".join(f"{k} {r[k]} there, {here[k]} here" for k in differ)
            raise ValueError(
                f"{path} holds rows of another sampler ({r['setting']}: {found}); give another --results"
            )


def plan_settings(args, preset, sweep: Sweep) -> list[Setting]:
    """The baseline and the suites' settings that ``--only`` selects; bad branches and schedules fail
    here, before any sampling."""
    name = type(sweep.pipe.scheduler).__name__
    sampler = SAMPLERS.get(name, name.removesuffix("Scheduler").lower())
    steps = args.steps or preset.steps
    plan = suites.Plan(
        steps=steps, branch=preset.branch if args.branch is None else args.branch,
        intervals=tuple(args.intervals), budgets=tuple(args.budgets), curve=tuple(args.curve),
        baseline=args.baseline_steps or steps, branches=tuple(args.branches or ()),
        schedules=tuple(args.schedules), sampler=sampler,
    )  # fmt: skip
    full, cached = sweep.call_macs(plan.deepcache("probe", 2))
    branches = num_branches(sweep.pipe.unet) if getattr(sweep.pipe, "unet", None) is not None else 0
    settings = suites.build(args.suites, plan, full, cached, branches)
    chosen = [settings[0]] + [
        s for s in settings[1:] if not args.only or any(fnmatch.fnmatch(s.name, p) for p in args.only)
    ]
    if args.only and len(chosen) == 1:
        names = ", ".join(s.name for s in settings[1:7]) + (", ..." if len(settings) > 7 else "")
        raise ValueError(f"--only {' '.join(args.only)} matches no setting of these suites ({names})")
    for s in chosen:
        if s.cache is not None:
            accelerator(sweep.pipe, s.cache, s.steps)
    return chosen


class Scorer:
    """Writes a setting's row (``cachediff.sweep.row`` and its measured speed) to ``--results``. The
    CLIP model loads at once (a bad ``--clip`` fails before any sampling), the FID reference
    statistics on the first row that needs them."""

    def __init__(
        self, args, sweep: Sweep, base: Setting, prompts, featurize, classifier=None, converged=None
    ):
        self.args, self.sweep, self.base, self.featurize = args, sweep, base, featurize
        self.prompts, self.classifier, self.converged = prompts, classifier, converged
        self.clip = args.clip and C.load_clip(args.clip, args.clip_arch, args.device)
        self._reference = None

    def reference(self):
        a = self.args
        if a.fid_reference and self._reference is None:
            self._reference = reference_stats(a.fid_reference, a.out, a.reference_images, self.featurize)
        return self._reference

    def _timing(self, s: Setting) -> dict:
        a = self.args
        return speed(self.sweep, self.base, s, a.timing_images, a.repeats) if a.repeats else {}

    def score(self, s: Setting) -> None:
        a = self.args
        scores = row(
            self.sweep, s, self.base, self.reference(), self.clip, self.prompts, self.classifier,
            self.converged, a.fidelity_images, a.fid_resamples,
        )  # fmt: skip
        values = scores | self._timing(s)
        update_csv(self.args.results, {k: values[k] for k in COLUMNS if k in values})
        print(values, flush=True)

    def wants_timing(self, row: dict) -> bool:
        """Whether a finished row is timed (again): ``--retime`` names it (or names none), or it has no
        measured speedup and this run measures one."""
        a, name = self.args, row["setting"]
        asked = a.retime is not None and (not a.retime or name in a.retime)
        unmeasured = a.repeats > 0 and is_missing(row.get("measured_speedup"))
        return (asked and name != self.base.name) or unmeasured

    def retime(self, s: Setting) -> None:
        update_csv(self.args.results, dict(setting=s.name, **self._timing(s)))


def scored_columns(args, preset, prompts) -> list[str]:
    """The quality columns that this run's options fill in a row (the class score: where the preset
    has a classifier and every prompt names a class, as ``cachediff.sweep.row`` scores it)."""
    classes = preset.class_score and prompts is not None and labels_of_prompts(prompts) is not None
    wanted = dict(fid=args.fid_reference, clip_score=args.clip, class_score=classes)
    wanted |= dict(fid_lo=args.fid_reference and args.fid_resamples, psnr_conv_db=args.converged_steps)
    return [c for c, on in wanted.items() if on]


if __name__ == "__main__":
    sys.exit(main())
