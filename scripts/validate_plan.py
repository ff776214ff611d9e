"""Does the planner pick well? Its picks on calibration seeds against the front on held-out seeds.

For each budget, ``cachediff.plan`` ranks the candidates on the calibration seeds (1,000,000+) and
picks one; this script then samples every candidate of the calibration front, and the fewer-steps
run whether on it or not, on the evaluation seeds (0 .. --evaluation - 1, which the planner never
sees), scores the mean per-image PSNR to the converged solution of the same noise with its 95%
interval, and says whether the pick lies within the interval of the best of them (a *hit*), and
whether caching or fewer steps sits on the front of the held-out scores.
With ``--fid-images``, each budget's pick, its fewer-steps run and the uncached run also get FID (and,
on the tiny SD, class score) with 95% intervals on seeds 0 .. --fid-images - 1 (``quality.csv``).
Samples are kept by seed under ``--out``, so an interrupted run resumes; ``--from-results`` adds FID
and class score to a validation that ``--results`` already holds, without planning again.

Example:
    python scripts/validate_plan.py --model_type tiny-sd --steps 25 --scheduler DPMSolverMultistepScheduler \\
        --timestep-spacing trailing --budgets 1.5 2 3 4 --out runs/validate/dpmpp-25 \\
        --results docs/results/planning/dpmpp-25 --fid-images 2000 --fid-reference fashion-mnist
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

from cachediff import generation, loading, metrics, scoring, stepping
from cachediff.cli import DTYPES, FOLLOW_HELP, SPACINGS
from cachediff.files import output_folder, write_csv, write_json
from cachediff.metrics import fid
from cachediff.metrics.class_score import load_classifier
from cachediff.pipelines import PRESETS, get_preset
from cachediff.plan import ACTS, RANK, Planner, Space, load, pareto, save
from cachediff.prompts import load_prompts
from cachediff.reference import Converged
from cachediff.rows import Setting
from cachediff.sweep import Sweep


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_type", default="tiny-sd", choices=list(PRESETS), help="model preset")
    p.add_argument("--model", help="hub id or local folder overriding the preset's weights")
    p.add_argument("--steps", type=int, help="the steps the user runs (default: the preset's)")
    p.add_argument("--scheduler", help="diffusers scheduler class (default: the preset's)")
    p.add_argument("--timestep-spacing", choices=SPACINGS, help="timestep spacing (default: the model's)")
    p.add_argument("--follow-timesteps", action="store_true", help=FOLLOW_HELP)
    p.add_argument("--budgets", type=float, nargs="+", default=[1.5, 2, 3, 4], help="speedup budgets")
    p.add_argument("--branches", type=int, nargs="+", help="branch ids the planner searches (default: all)")
    p.add_argument("--acts", nargs="+", choices=list(ACTS), help="acts the planner searches (default: all)")
    p.add_argument("--calibration", type=int, default=32, help="calibration images the planner scores")
    p.add_argument("--evaluation", type=int, default=500, help="held-out images (seeds 0..N-1) per candidate")
    p.add_argument(
        "--converged-steps", type=int, help="steps of the fine solve (default: 200 of DPM-Solver++ 2M; "
        "1000 of DDIM for DDIM pipelines)",
    )  # fmt: skip
    p.add_argument(
        "--converged-out", type=Path, help="folder of the held-out seeds' converged reference (default: "
        "OUT/evaluation; a sweep's --converged-out of the same model, prompts and guidance is shared)",
    )  # fmt: skip
    p.add_argument(
        "--batch", type=int, help="images per pipeline call, on calibration and held-out seeds alike "
        "(default: the preset's; the adaptive schedule decides per call for the whole batch)",
    )  # fmt: skip
    p.add_argument("--shard", type=int, default=100, help="images per saved file of the evaluation")
    p.add_argument(
        "--fid-images", type=int, default=0, help="images (seeds 0..N-1) on which each budget's pick, "
        "its fewer-steps run and the uncached run get FID and class score with intervals (0: none)",
    )  # fmt: skip
    p.add_argument("--fid-reference", help="FID reference with --fid-images: statistics (.npz), "
                   + " or ".join(repr(r) for r in scoring.REFERENCES))  # fmt: skip
    p.add_argument("--fid-resamples", type=int, default=50, help="bootstrap resamplings for FID's interval")
    p.add_argument(
        "--from-results", action="store_true", help="take the plans and held-out verdicts that an earlier "
        "run wrote to --results instead of planning and evaluating again (with --fid-images: adds FID "
        "and class score alone)",
    )  # fmt: skip
    p.add_argument("--repeats", type=int, default=3, help="interleaved timed repeats of the front")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weights and compute dtype")
    p.add_argument("--out", type=Path, required=True, help="samples (calibration, evaluation, references)")
    p.add_argument("--results", type=Path, required=True, help="folder for validation.csv, .md and the plan")
    args = p.parse_args(argv)
    counts = [
        args.calibration,
        args.evaluation,
        args.converged_steps or 1,
        args.shard,
        args.repeats,
        args.batch or 1,
    ]
    if min(counts + [args.steps or 1, args.threads or 1]) < 1:
        p.error(
            "--calibration, --evaluation, --converged-steps, --shard, --repeats, --steps and --threads "
            "must be >= 1"
        )
    if min(args.budgets) <= 1:
        p.error("--budgets are speedups > 1")
    if args.fid_images and not args.fid_reference:
        p.error("--fid-images needs --fid-reference")
    if args.fid_images < 0 or args.fid_resamples < 1:
        p.error("--fid-images must be >= 0 and --fid-resamples >= 1")
    if args.from_results and not args.fid_images:
        p.error("--from-results adds FID and class score: give --fid-images")
    if args.fid_images and (args.fid_images % args.shard or args.evaluation % args.shard):
        p.error("--fid-images and --evaluation must be multiples of --shard (they share sample files)")
    return args


def evaluation_rows(plan, sweep: Sweep, converged: Converged) -> list[dict]:
    """Every front candidate of ``plan`` and its fewer-steps run (on the front or not) scored on the
    evaluation seeds, the pick and the best marked, with the paired interval of (best - this) in mean
    per-image PSNR."""
    fewer = [r["candidate"] for r in plan.rows if r["interval"] == 1]
    settings = {name: plan.settings[name] for name in dict.fromkeys([*plan.front, *fewer])}
    reference = converged.images(sweep.n)
    per_image = {}
    for name, setting in settings.items():
        per_image[name] = metrics.psnr_per_image(
            metrics.mse_per_image(sweep.first(setting, sweep.n), reference)
        )
    scores = {name: metrics.mean_interval(v) for name, v in per_image.items()}
    best = max(scores, key=lambda n: scores[n].estimate)
    rows = []
    for r in plan.rows:
        if r["candidate"] not in settings:
            continue
        name, ci = r["candidate"], scores[r["candidate"]]
        gap = metrics.mean_interval(per_image[best] - per_image[name])
        rows.append(dict(
            budget=plan.budget, candidate=name, caching=r["interval"] > 1, mac_speedup=r["mac_speedup"],
            measured_speedup=r.get("measured_speedup"), calibration_front=r["front"], calibration_db=r[RANK],
            evaluation_db=ci.estimate, evaluation_db_lo=ci.low, evaluation_db_hi=ci.high,
            best_minus_this_db=gap.estimate, best_minus_this_db_lo=gap.low, best_minus_this_db_hi=gap.high,
            pick=name == plan.pick, best=name == best, images=sweep.n,
        ))  # fmt: skip
    front = pareto([(r["candidate"], r["mac_speedup"], r["evaluation_db"]) for r in rows])
    for r in rows:
        r["front"] = r["candidate"] in front  # on held-out seeds
    return rows


def quality_rows(
    plans, steps: int, sweep: Sweep, reference, classifier, prompts, resamples: int
) -> list[dict]:
    """FID and class score, with intervals, of each budget's pick and fewer-steps run and of the
    uncached run of ``steps``, on all of ``sweep``'s seeds (``cachediff.scoring.row``)."""
    base, scored = Setting(f"steps-{steps}", steps), {}

    def scores(setting: Setting) -> dict:
        if setting.name not in scored:
            sweep.generate_missing(setting)
            scored[setting.name] = scoring.row(
                sweep, setting, base, reference, None, prompts, classifier, fid_resamples=resamples
            )
        return scored[setting.name]

    rows = [dict(budget=None, role="uncached", **scores(base))]
    for plan in plans:
        fewer = next(r["candidate"] for r in plan.rows if r["interval"] == 1)
        for name, role in ((fewer, "fewer steps"), (plan.pick, "pick")):
            rows.append(dict(budget=plan.budget, role=role, **scores(plan.settings[name])))
    return rows


def quality_summary(rows: list[dict]) -> str:
    """FID and class score per budget as Markdown."""
    ci = lambda r, c: f"{r[c]:.2f} [{r[c + '_lo']:.2f}, {r[c + '_hi']:.2f}]" if c + "_lo" in r else "-"  # noqa: E731
    n = rows[0]["samples"]
    lines = [
        f"FID and class score on {n} images (seeds 0..{n - 1}), 95% intervals:",
        "",
        "| budget | role | candidate | MAC bound | FID [95% CI] | class score [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        budget = "-" if r["budget"] is None else f"{r['budget']:g}x"
        lines.append(
            f"| {budget} | {r['role']} | {r['setting']} | {r['mac_speedup']:.2f}x | {ci(r, 'fid')} | "
            f"{ci(r, 'class_score')} |"
        )
    return "\n".join(lines) + "\n"


def summary(rows: list[dict], about: str) -> str:
    """The verdict per budget as Markdown: pick, best, hit, and what sits on the front."""
    head = "| budget | pick | best on held-out seeds | pick, dB [95% CI] | best, dB [95% CI] | hit | front |"
    lines = [about, "", head, "|---|---|---|---|---|---|---|"]
    hits = 0
    for budget in sorted({r["budget"] for r in rows}):
        at = [r for r in rows if r["budget"] == budget]
        pick, best = next(r for r in at if r["pick"]), next(r for r in at if r["best"])
        hit = best["evaluation_db_lo"] <= pick["evaluation_db"]
        hits += hit
        kinds = sorted({"caching" if r["caching"] else "fewer steps" for r in at if r["front"]})  # held out
        ci = "{:.2f} [{:.2f}, {:.2f}]".format
        lines.append(
            f"| {budget:g}x | {pick['candidate']} | {best['candidate']} | "
            f"{ci(pick['evaluation_db'], pick['evaluation_db_lo'], pick['evaluation_db_hi'])} | "
            f"{ci(best['evaluation_db'], best['evaluation_db_lo'], best['evaluation_db_hi'])} | "
            f"{'yes' if hit else 'no'} | {', '.join(kinds)} |"
        )
    budgets = len({r["budget"] for r in rows})
    return "\n".join([*lines, "", f"hit rate: {hits} of {budgets} budgets"]) + "\n"


def report(rows: list[dict], quality: list[dict], about: str) -> str:
    """``validation.md``: the verdict per budget and, where measured, FID and class score."""
    return summary(rows, about) + ("\n" + quality_summary(quality) if quality else "")


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
    output_folder(args.out), output_folder(args.results)
    preset = get_preset(args.model_type)
    steps, batch = args.steps or preset.steps, args.batch or preset.batch
    pipe = loading.load_pipeline(preset, args.model, "cpu", DTYPES[args.dtype])
    loading.set_scheduler(
        pipe, args.scheduler or preset.scheduler, args.timestep_spacing, follow=args.follow_timesteps
    )
    inputs, prompts = generation.default_inputs(pipe, preset.task, None, None), None
    if preset.takes_prompt:
        prompts = load_prompts(preset.prompts)
        inputs |= loading.guidance(preset.model_path(args.model))
    common = dict(task=preset.task, prompts=prompts, batch=batch, **inputs)
    if args.from_results:
        plans, rows, about = recorded(args.results, args.model_type, steps)
    else:
        plans, rows, about = plan_and_evaluate(args, pipe, steps, common)
        save(plans, args.results, dict(about=about))
        write_csv(rows, args.results / "validation.csv")
    quality = []
    if args.fid_images:
        inception = fid.load_inception()
        featurize = lambda x: fid.inception_features(x, inception, 50, False)  # noqa: E731
        reference = scoring.reference_stats(args.fid_reference, args.out, 2000, featurize)
        classifier = load_classifier() if preset.class_score else None
        evaluation = Sweep(pipe, args.out / "evaluation", args.fid_images, args.shard, featurize, **common)
        quality = quality_rows(plans, steps, evaluation, reference, classifier, prompts, args.fid_resamples)
        write_csv(quality, args.results / "quality.csv")
    write_json(args.results / "validation.json", dict(about=about, rows=rows, quality=quality))
    text = report(rows, quality, about)
    (args.results / "validation.md").write_text(text)
    print(text)
    return 0


def plan_and_evaluate(args, pipe, steps: int, common: dict) -> tuple[list, list[dict], str]:
    """Plan every budget on the calibration seeds, then score each plan's front and fewer-steps run
    on the evaluation seeds: the plans, the evaluation rows and what was run."""
    space = Space(branches=args.branches and tuple(args.branches), acts=tuple(args.acts or ACTS))
    planner = Planner(
        pipe, args.out / "plan", steps, calibration=args.calibration, converged_steps=args.converged_steps,
        space=space, repeats=args.repeats, **common,
    )  # fmt: skip
    plans = [planner.plan(b) for b in args.budgets]
    sweep = Sweep(pipe, args.out / "evaluation", args.evaluation, args.shard, **common)
    folder = args.converged_out or args.out / "evaluation"
    converged = Converged(pipe, folder, args.evaluation, args.converged_steps, args.shard, **common)
    rows = [r for p in plans for r in evaluation_rows(p, sweep, converged)]
    spacing = pipe.scheduler.config.get("timestep_spacing") + " spacing"
    spacing += ", following its timesteps" if stepping.mode(pipe.scheduler) == "follow" else ""
    about = (
        f"{args.model_type}, {type(pipe.scheduler).__name__} {steps} steps, {spacing}; fidelity: "
        f"mean per-image PSNR to {converged.describe()}; calibration seeds {args.calibration} from "
        f"1,000,000, evaluation seeds 0..{args.evaluation - 1}; {datetime.date.today()}, "
        f"{platform.machine()}, {torch.get_num_threads()} threads"
    )
    return plans, rows, about


def recorded(results: Path, model_type: str, steps: int) -> tuple[list, list[dict], str]:
    """The plans, evaluation rows and description that an earlier run wrote to ``results``, checked
    against the model and steps asked for now."""
    record = json.loads((results / "validation.json").read_text())
    plans = load(results)
    planned = {r["steps"] for p in plans for r in p.rows if r["interval"] > 1}
    if not record["about"].startswith(f"{model_type},") or planned != {steps}:
        what = record["about"].split(";")[0]
        raise ValueError(f"{results} holds a validation of {what!r}, not {model_type} at {steps} steps")
    return plans, record["rows"], record["about"]


if __name__ == "__main__":
    sys.exit(main())
