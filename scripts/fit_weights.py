"""Where the fitted forecast departs from the timestep's: per cached step of one run, the weights of the
kept full steps (oldest first) in the timestep's polynomial and as fitted on the shallow feature
(``DeepCacheConfig(reuse="forecast", time="shallow" | "anchored")``, ``cachediff.acts.fitted_weights``),
for the first image of the batch. docs/SOLVERS.md reads it to say where the fit disagrees with the clock.

Example:
    python scripts/fit_weights.py --model_type tiny-sd --scheduler DPMSolverMultistepScheduler --steps 25 \\
        --interval 3 --order 2 --time shallow
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cachediff  # noqa: E402
from cachediff import acts, generation, loading  # noqa: E402
from cachediff.pipelines import PRESETS, get_preset  # noqa: E402
from cachediff.prompts import load_prompts  # noqa: E402


@contextlib.contextmanager
def recorded_fits(rows: list[dict]):
    """Record each cached call of a fitted forecast: its time, the kept full steps' times, and the
    fitted weights of the first image (computed again beside the act's own: a few inner products)."""
    give = acts.Forecast.give

    def recording(self, kept, layout, t, probe=None):
        probes = [p.probe for p in kept]
        if self.fitted and len(kept) >= 2 and probe is not None and None not in probes:
            times = [p.t for p in kept]
            weights = acts.fitted_weights(tuple(probes), probe, times if self.anchored else None, t)
            first = [float(w.reshape(-1)[0]) if torch.is_tensor(w) else w for w in weights]
            rows.append(dict(t=t, times=times, fitted=first))
        return give(self, kept, layout, t, probe)

    acts.Forecast.give = recording
    try:
        yield rows
    finally:
        acts.Forecast.give = give


def table(rows: list[dict]) -> str:
    """One line per cached step: its timestep, the timestep's weights and the fitted ones."""
    lines = ["| timestep | in the timestep | fitted |", "|---|---|---|"]
    for row in rows:
        clock = acts.lagrange_weights(row["times"], row["t"])
        lines.append(f"| {row['t']:g} | {_list(clock)} | {_list(row['fitted'])} |")
    return "\n".join(lines)


def _list(weights: list[float]) -> str:
    return ", ".join(f"{w:+.3f}" for w in weights)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model_type", default="tiny-sd", choices=sorted(PRESETS), help="a preset (shipped: tiny-sd)"
    )
    p.add_argument("--model", help="model folder (default: the preset's)")
    p.add_argument("--scheduler", help="diffusers scheduler class (default: the preset's)")
    p.add_argument("--timestep_spacing", default="trailing", help="the scheduler's timestep spacing")
    p.add_argument("--steps", type=int, default=25, help="sampler steps")
    p.add_argument("--interval", type=int, default=3, help="cache interval N (>= 2)")
    p.add_argument("--branch", type=int, default=0, help="skip branch id")
    p.add_argument("--order", type=int, default=2, help="full steps the forecast passes through (2..4)")
    p.add_argument("--time", default="shallow", choices=["shallow", "anchored"], help="the fit")
    p.add_argument("--seed", type=int, default=0, help="the image's seed (and prompt index)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if args.interval < 2:
        p.error(f"--interval must be >= 2 (1 caches nothing), got {args.interval}")
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = get_preset(args.model_type)
    pipe = loading.load_pipeline(preset, args.model)
    loading.set_scheduler(pipe, args.scheduler or preset.scheduler, args.timestep_spacing)
    inputs = {}
    if preset.takes_prompt:
        prompts = load_prompts(preset.prompts)
        inputs = dict(prompt=prompts[args.seed % len(prompts)])
        inputs |= loading.guidance(preset.model_path(args.model))
    config = dict(
        interval=args.interval, branch=args.branch, reuse="forecast", order=args.order, time=args.time
    )
    with recorded_fits([]) as rows, cachediff.deepcache(pipe, **config) as engine:
        generation.TASKS[preset.task](pipe, [args.seed], args.steps, **inputs)
    print(f"{args.model_type}, {type(pipe.scheduler).__name__} {args.steps} steps ({args.timestep_spacing}), "
          f"N = {args.interval}, branch {args.branch}, order {args.order}, {args.time} fit; "
          f"pattern {engine.stats.pattern}; seed {args.seed}; weights of the kept full "
          "steps, oldest first, for the first image\n")  # fmt: skip
    print(table(rows))


if __name__ == "__main__":
    main()
