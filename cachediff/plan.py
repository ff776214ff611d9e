"""The planner: for a model, its sampler and step count and a speed budget, which acceleration loses least.

Every user of DeepCache makes one decision: fewer steps, or interval x branch x schedule x act at the
steps they run? ``plan`` answers it with evidence, in four phases (docs/PLANNING.md):

1. *Candidates*: fewer steps without caching, and interval N x branch b x schedule (uniform,
   non-uniform, adaptive) x act (replay, forecast of order 2, 3 in the timestep, in lambda = log(alpha
   / sigma) or fitted on the shallow feature, and of order 3 anchored to the timestep) at the user's
   steps (``Space``; lambda only where the scheduler has ``alphas_cumprod``).
2. *Prune by MACs*: a candidate's MAC speedup bound comes from the MACs of a full and a cached call
   at its branch and its ceil(T / N) full steps of the T model calls its sampler makes (``model_calls``:
   PLMS makes one more than its steps); of each family (branch, schedule, act) only the
   smallest N that reaches the budget is kept (a larger N caches more and is no closer), and of the
   fewer-steps runs the most steps that reach it.
3. *Fidelity on calibration seeds*: the mean per-image PSNR to the converged solution of the same ODE
   from the same noise (``cachediff.reference``; the pooled PSNR beside it), on seeds from
   ``CALIBRATION_SEED``, which no evaluation uses. The mean weighs every image alike; the pooled value
   is ruled by the few seeds whose trajectory falls into another mode.
4. *Time the front*: the Pareto front of fidelity against MAC speedup is timed (interleaved with the
   uncached run); the pick is the most faithful front candidate that reaches the budget, by MACs or
   by measured time.

Cost: phase 3 generates every kept candidate on the calibration seeds, so it grows with the
families (branches x schedules x acts, one N each), not with the intervals; phase 4 with the front.

Example:
    >>> space = Space(intervals=(2, 3, 4), branches=(0, 1), schedules=("uniform",), acts=("replay",))
    >>> macs = {0: (10.0, 2.0), 1: (10.0, 5.0)}  # branch -> MACs of a full and a cached call
    >>> [(c.name, round(b, 2)) for c, b in prune(candidates(12, space), macs, 12, budget=1.5)]
    [('steps-8', 1.5), ('N2-b0-uniform-replay', 1.67), ('N3-b1-uniform-replay', 1.5)]
    >>> pareto([("a", 2.0, 30.0), ("b", 3.0, 28.0), ("c", 2.5, 27.0), ("d", 1.5, 30.0)])
    ['a', 'b']
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import metrics, scoring
from .accelerators import accelerator, call_macs
from .config import DeepCacheConfig
from .files import write_csv, write_json
from .metrics import average_macs
from .reference import Converged
from .rows import Setting
from .sweep import Sweep
from .unets import num_branches

#: The column that ranks candidates: mean per-image PSNR to the converged solution.
RANK = "psnr_conv_mean_db"
#: The first calibration seed: far from the evaluation seeds, which start at 0.
CALIBRATION_SEED = 1_000_000
#: What a cached step hands the shallow branch, by name.
ACTS = {
    "replay": dict(reuse="cache"),
    "forecast2": dict(reuse="forecast", order=2, time="timestep"),
    "forecast3": dict(reuse="forecast", order=3, time="timestep"),
    "forecast2-shallow": dict(reuse="forecast", order=2, time="shallow"),
    "forecast3-shallow": dict(reuse="forecast", order=3, time="shallow"),
    "forecast3-anchored": dict(reuse="forecast", order=3, time="anchored"),
    "forecast2-lambda": dict(reuse="forecast", order=2, time="lambda"),
    "forecast3-lambda": dict(reuse="forecast", order=3, time="lambda"),
}
#: Schedules, by name (non-uniform: the paper's centre 15 and power 1.4).
SCHEDULES = {
    "uniform": {},
    "non-uniform": dict(schedule="non-uniform"),
    "adaptive": dict(schedule="adaptive"),
}


@dataclass(frozen=True)
class Space:
    """The candidates searched: intervals, branch ids (``None``: all of the U-Net's), schedules,
    acts, and whether plain sampling with fewer steps competes."""

    intervals: tuple[int, ...] = (2, 3, 4, 5, 6, 8, 10, 15, 20)
    branches: tuple[int, ...] | None = None
    schedules: tuple[str, ...] = tuple(SCHEDULES)
    acts: tuple[str, ...] = tuple(ACTS)
    fewer_steps: bool = True


def candidates(steps: int, space: Space, branches: int | None = None) -> list[Setting]:
    """Every candidate of ``space`` at ``steps`` (``branches``: the U-Net's count, when ``space``
    names none); settings that cannot exist (a non-uniform schedule without enough steps) are left out."""
    out = [Setting(f"steps-{s}", s) for s in range(steps - 1, 0, -1)] if space.fewer_steps else []
    ids = space.branches if space.branches is not None else range(branches or 1)
    for b, schedule, act, n in itertools.product(ids, space.schedules, space.acts, space.intervals):
        if n >= steps:
            continue
        try:
            config = DeepCacheConfig(interval=n, branch=b, **SCHEDULES[schedule], **ACTS[act])
            if not config.adaptive:
                config.full_steps_for(steps)
        except ValueError:
            continue
        out.append(Setting(f"N{n}-b{b}-{schedule}-{act}", steps, config))
    return out


def same_count(steps: int) -> int:
    """The model calls of a run of ``steps`` steps for a sampler that calls the model once per step."""
    return steps


def model_calls(scheduler) -> Callable[[int], int]:
    """The model calls of a run of ``steps`` steps of ``scheduler``, as the engine counts them: the
    length of its timesteps (PLMS calls the model once more than its steps; Heun twice per step).

    Example:
        >>> from diffusers import PNDMScheduler
        >>> calls = model_calls(PNDMScheduler(skip_prk_steps=True))
        >>> calls(50), calls(12)
        (51, 13)
    """

    @functools.cache
    def calls(steps: int) -> int:
        copy = type(scheduler).from_config(scheduler.config)  # the user's scheduler keeps its state
        copy.set_timesteps(steps)
        return len(copy.timesteps)

    return calls


def mac_speedup(setting: Setting, macs: dict[int, tuple[float, float]], steps: int,
                calls: Callable[[int], int] = same_count) -> float:  # fmt: skip
    """MAC speedup bound of ``setting`` over the uncached run of ``steps`` steps, given each branch's
    MACs of a full and a cached call (the adaptive schedule counted at its budget of full steps) and
    the sampler's model ``calls`` per step count (``model_calls``)."""
    n = calls(steps)
    if setting.cache is None:
        return n / calls(setting.steps)
    config = setting.cache
    full, cached = macs[config.branch]
    n_full = config.budget(n) if config.adaptive else len(config.full_steps_for(n))
    return full / average_macs(full, cached, n_full, n)


def prune(settings: Sequence[Setting], macs: dict, steps: int, budget: float,
          calls: Callable[[int], int] = same_count) -> list[tuple[Setting, float]]:  # fmt: skip
    """The candidates worth scoring at ``budget``, with their MAC speedup bounds: the fewer-steps run
    of the most steps and, per family (branch, schedule, act), the smallest interval that reach it."""
    kept: dict[tuple, tuple[Setting, float]] = {}
    for s in settings:
        bound = mac_speedup(s, macs, steps, calls)
        if bound < budget - 1e-9:
            continue
        c = s.cache
        family = ("fewer",) if c is None else (c.branch, c.schedule, c.reuse, c.order, c.time)
        if family not in kept or _cost_rank(s) < _cost_rank(kept[family][0]):
            kept[family] = (s, bound)
    return list(kept.values())


def _cost_rank(s: Setting) -> int:
    """Within a family, lower is more work and closer to the uncached run: more steps, smaller N."""
    return -s.steps if s.cache is None else s.cache.interval


def pareto(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """Names on the front of (name, speedup, fidelity) points: none other is at least as fast and as
    faithful and better in one; in the order given."""
    front = []
    for name, speed, quality in points:
        beaten = any(
            s >= speed and f >= quality and (s > speed or f > quality) for n, s, f in points if n != name
        )
        if not beaten:
            front.append(name)
    return front


@dataclass
class Plan:
    """The outcome at one budget: every scored candidate (``rows``; ``settings`` by name), the front
    and the pick."""

    budget: float
    by: str
    rows: list[dict]
    front: list[str]
    pick: str
    settings: dict[str, Setting] = dataclasses.field(default_factory=dict, repr=False)

    def table(self) -> str:
        """The rows as a Markdown table, the front marked, the pick in bold."""
        lines = [
            f"budget {self.budget:g}x by {self.by}: pick **{self.pick}**",
            "| candidate | MAC speedup | measured | PSNR to converged, dB: mean [95% CI] | pooled | front |",
            "|---|---|---|---|---|---|",
        ]
        for r in sorted(self.rows, key=lambda r: -r[RANK]):
            name = f"**{r['candidate']}**" if r["candidate"] == self.pick else r["candidate"]
            measured = "-" if r.get("measured_speedup") is None else f"{r['measured_speedup']:.2f}x"
            mean = f"{r[RANK]:.2f} [{r[RANK + '_lo']:.2f}, {r[RANK + '_hi']:.2f}]"
            cells = [name, f"{r['mac_speedup']:.2f}x", measured, mean, f"{r['psnr_conv_db']:.2f}"]
            lines.append("| " + " | ".join([*cells, "x" if r["front"] else ""]) + " |")
        return "\n".join(lines)


class Planner:
    """Plans accelerations of ``pipe`` at ``steps`` steps of its sampler (its scheduler as it is).

    Args:
        pipe: a diffusers pipeline with a U-Net.
        out: a folder for the calibration samples, the converged reference and the plan's files.
        steps: the steps the user runs.
        task, prompts, inputs: how images are made, as ``cachediff.sweep.Sweep`` takes them.
        calibration: calibration images (seeds from ``CALIBRATION_SEED``).
        converged_steps: the fine solver's steps for the converged reference (``None``: its default).
        space: the candidates searched.
        timing_images, repeats: images per timed run and interleaved repeats of the front's timing.
        batch: images per pipeline call on the calibration seeds (default: all of them); give the
            batch you run, as the adaptive schedule decides per call for the whole batch.
    """

    def __init__(self, pipe, out: Path, steps: int, task: str, prompts=None, calibration: int = 32,
                 converged_steps: int | None = None, space: Space = Space(), timing_images: int = 2,
                 repeats: int = 2, batch: int | None = None, **inputs):  # fmt: skip
        if getattr(pipe.scheduler, "alphas_cumprod", None) is None:  # no noise levels: no forecast in lambda
            space = dataclasses.replace(
                space, acts=tuple(a for a in space.acts if not _needs_noise_levels(a))
            )
        self.pipe, self.out, self.steps, self.space = pipe, Path(out), steps, space
        self.calls = model_calls(pipe.scheduler)
        self.timing_images, self.repeats = timing_images, repeats
        common = dict(task=task, prompts=prompts, batch=batch, first_seed=CALIBRATION_SEED, **inputs)
        self.sweep = Sweep(pipe, self.out / "calibration", calibration, calibration, **common)
        self.converged = Converged(pipe, self.out, calibration, converged_steps, calibration, **common)
        self.base = Setting(f"steps-{steps}", steps)
        self._scores: dict[str, dict] = {}
        self._timed: dict[str, float] = {}

    @functools.cached_property
    def macs(self) -> dict[int, tuple[float, float]]:
        """MACs of a full and a cached call per branch id (on a ``meta`` copy: no compute), once."""
        n = num_branches(self.pipe.unet)
        ids = self.space.branches if self.space.branches is not None else range(n)
        return {b: call_macs(accelerator(self.pipe, DeepCacheConfig(branch=b), self.steps)) for b in ids}

    @functools.cached_property
    def converged_images(self) -> torch.Tensor:
        """The calibration seeds' converged images, generated where missing, read once."""
        return self.converged.images(self.sweep.n)

    def fidelity(self, setting: Setting) -> dict:
        """PSNR of ``setting``'s calibration images to the converged ones, per-image mean
        (``psnr_conv_mean_db``, which ranks) and pooled (``psnr_conv_db``), with intervals; once."""
        if setting.name not in self._scores:
            scores = scoring.fidelity(self.sweep.first(setting), self.converged_images)
            self._scores[setting.name] = {k.replace("psnr_", "psnr_conv_"): v for k, v in scores.items()}
        return self._scores[setting.name]

    def measured_speedup(self, setting: Setting) -> float:
        """Speedup over the uncached run at the user's steps, interleaved timing (measured once)."""
        if setting.name not in self._timed:
            times = self.sweep.seconds([self.base, setting], self.timing_images, self.repeats)
            self._timed[setting.name] = metrics.speedup(times[self.base.name], times[setting.name])
        return self._timed[setting.name]

    def plan(self, budget: float, by: str = "macs") -> Plan:
        """The plan at ``budget`` (a speedup > 1) by MAC bound (``by="macs"``) or by measured time
        (``by="time"``: the MACs prune, the timing of the front decides which reach the budget)."""
        if not budget > 1 or by not in ("macs", "time"):
            raise ValueError(f"a budget is a speedup > 1 by 'macs' or 'time'; got {budget!r} by {by!r}")
        macs = self.macs
        settings = candidates(self.steps, self.space, len(macs))
        kept = prune(settings, macs, self.steps, budget, self.calls)
        if not kept:
            fastest = max(settings, key=lambda s: mac_speedup(s, macs, self.steps, self.calls))
            raise ValueError(
                f"no candidate reaches {budget:g}x; the fastest is {fastest.name} at "
                f"{mac_speedup(fastest, macs, self.steps, self.calls):.2f}x by MACs"
            )
        rows = []
        for s, bound in tqdm(kept, desc=f"plan {budget:g}x: calibration", leave=False):
            row = dict(candidate=s.name, budget=budget, steps=s.steps, mac_speedup=bound)
            row |= _config_columns(s.cache) | self.fidelity(s)
            rows.append(row)
        front = pareto([(r["candidate"], r["mac_speedup"], r[RANK]) for r in rows])
        by_name = {s.name: s for s, _ in kept}
        for r in rows:
            r["front"] = r["candidate"] in front
            if r["front"]:
                r["measured_speedup"] = self.measured_speedup(by_name[r["candidate"]])
        reach = [r for r in rows if r["front"] and (by == "macs" or r["measured_speedup"] >= budget)]
        if not reach:
            fastest = max((r for r in rows if r["front"]), key=lambda r: r["measured_speedup"])
            raise ValueError(
                f"no candidate reaches {budget:g}x in measured time here; the fastest is "
                f"{fastest['candidate']} at {fastest['measured_speedup']:.2f}x"
            )
        pick = max(reach, key=lambda r: r[RANK])["candidate"]
        return Plan(budget, by, rows, front, pick, by_name)


def _needs_noise_levels(act: str) -> bool:
    """Whether ``act`` forecasts in a noise level (which the scheduler's ``alphas_cumprod`` gives)."""
    return ACTS[act].get("time") in ("sigma", "lambda")


def _config_columns(config: DeepCacheConfig | None) -> dict:
    if config is None:
        return dict(interval=1, branch=None, schedule=None, act=None)
    act = next(
        name for name, fields in ACTS.items() if all(getattr(config, k) == v for k, v in fields.items())
    )
    return dict(interval=config.interval, branch=config.branch, schedule=config.schedule, act=act)


def setting_of(row: dict) -> Setting:
    """The candidate a plan's row describes (the inverse of its parameter columns).

    Example:
        >>> setting_of(dict(candidate="N3-b1-uniform-forecast2", steps=25, interval=3, branch=1,
        ...                 schedule="uniform", act="forecast2")).cache.order
        2
    """
    if row["interval"] == 1:
        return Setting(row["candidate"], row["steps"])
    fields = dict(
        interval=row["interval"], branch=row["branch"], **SCHEDULES[row["schedule"]], **ACTS[row["act"]]
    )
    return Setting(row["candidate"], row["steps"], DeepCacheConfig(**fields))


def load(folder: Path) -> list[Plan]:
    """The plans that ``save`` wrote to ``folder``, each candidate's setting rebuilt from its row."""
    record = json.loads((Path(folder) / "plan.json").read_text())
    plans = []
    for p in record["plans"]:
        rows = [r for r in record["rows"] if r["budget"] == p["budget"]]
        settings = {r["candidate"]: setting_of(r) for r in rows}
        plans.append(Plan(p["budget"], p["by"], rows, p["front"], p["pick"], settings))
    return plans


def save(plans: Sequence[Plan], out: Path, describe: dict) -> None:
    """``plan.json`` (what was planned, each budget's front and pick, every row), ``plan.csv`` (the
    rows) and ``plan.png`` (fidelity against MAC speedup per budget, the front joined, the pick
    starred) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for p in plans for r in p.rows]
    record = dict(describe, plans=[dict(budget=p.budget, by=p.by, front=p.front, pick=p.pick) for p in plans])
    write_json(out / "plan.json", dict(record, rows=rows))
    write_csv(rows, out / "plan.csv")
    _plot(plans, out / "plan.png")


def _plot(plans: Sequence[Plan], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import save_figure

    cols = min(len(plans), 2)
    rows = -(-len(plans) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.5 * rows), squeeze=False)
    for ax in axes.flat[len(plans) :]:
        ax.remove()
    for ax, p in zip(axes.flat, plans, strict=False):  # the grid may hold one more
        for r in p.rows:
            fewer = r["interval"] == 1
            error = [[r[RANK] - r[RANK + "_lo"]], [r[RANK + "_hi"] - r[RANK]]]
            style = dict(fmt="s", color="tab:red") if fewer else dict(fmt="o", color="tab:blue")
            ax.errorbar(r["mac_speedup"], r[RANK], yerr=error, alpha=0.8, ms=5, **style)
        front = sorted((r for r in p.rows if r["front"]), key=lambda r: r["mac_speedup"])
        ax.plot([r["mac_speedup"] for r in front], [r[RANK] for r in front], "k--", lw=1, label="front")
        pick = next(r for r in p.rows if r["candidate"] == p.pick)
        ax.plot(pick["mac_speedup"], pick[RANK], "*", ms=18, color="gold", mec="k", label=f"pick: {p.pick}")
        ax.axvline(p.budget, color="grey", lw=0.8)
        ax.set(xlabel="MAC speedup bound", ylabel="PSNR to the converged solution (dB, mean per image)",
               title=f"budget {p.budget:g}x by {p.by}, calibration seeds (red: fewer steps)")  # fmt: skip
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
