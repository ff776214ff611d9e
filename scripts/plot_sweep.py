"""Plots and a Markdown table from a sweep CSV (``scripts/sweep.py``; its parameter columns, never the
setting names, say what each row is).

Quality (FID, CLIP score or PSNR to the baseline) against cost, as average MACs per step of the
baseline's run and as measured speedup: the Pareto view, one curve per method and step count (each
schedule, and plain sampling with fewer steps, which shares the uncached baseline as its costliest
point). Quality and MACs per branch at the interval
swept over most branches. With ``--grid``, the first images of the named settings, one row each:
the same seeds, so the rows differ only by the setting.

Example:
    python scripts/plot_sweep.py runs/mnist-sweep/results.csv --out docs/results/mnist \
        --grid ddim-100 N5-b2 N5-b2-zeros ddim-20
    python scripts/plot_sweep.py runs/sweep/results.csv --out runs/sweep/plots --quality clip_score
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cachediff.files import save_figure  # noqa: E402

#: quality columns
QUALITIES = {
    "fid": "FID (lower is better)",
    "clip_score": "CLIP score",
    "class_score": "class score (higher is better)",
    "psnr_db": "PSNR to baseline (dB)",
    "psnr_conv_mean_db": "PSNR to the converged solution (dB, mean per image)",
    "psnr_conv_db": "PSNR to the converged solution (dB, pooled)",
}
FEWER = "fewer steps"
COST = "MMACs per step (average over the baseline's steps)"
#: scheduler class -> the sampler's name in legends
SAMPLERS = {
    "DDIMScheduler": "DDIM",
    "PNDMScheduler": "PLMS",
    "DPMSolverMultistepScheduler": "DPM-Solver++",
    "EulerDiscreteScheduler": "Euler",
    "UniPCMultistepScheduler": "UniPC",
}


def column(df: pd.DataFrame, names) -> str:
    found = [c for c in names if c in df and df[c].notna().any()]
    if not found:
        raise SystemExit(f"error: the CSV has none of the columns {', '.join(names)}")
    return found[0]


def mmacs_per_step(df: pd.DataFrame) -> pd.Series:
    """MMACs per step of the uncached baseline's run (the longest uncached one): a run's MACs per image
    spread over the baseline's steps."""
    return df.gmacs_per_image * 1000 / df[df.method == "uncached"].steps.max()


def groups(df: pd.DataFrame, cost: str) -> dict[str, pd.DataFrame]:
    """Curves of the Pareto view: one per method and step count, at the sweep's main branch (runs
    over fewer steps at any branch). Uncached runs of any step count form the fewer-steps curve;
    each cached curve ends at the uncached run of its own step count.

    Example:
        >>> df = pd.DataFrame(dict(
        ...     setting=["ddim-100", "ddim-20", "N5-b2", "N10-b2", "N5-b0", "s20-N2-b0", "s20-N3-b0"],
        ...     method=["uncached"] * 2 + ["uniform"] * 5, sampler="DDIMScheduler",
        ...     steps=[100, 20, 100, 100, 100, 20, 20], interval=[1, 1, 5, 10, 5, 2, 3],
        ...     branch=[0, 0, 2, 2, 0, 0, 0], c=[4, 1, 2, 1.8, 1.5, 0.5, 0.4],
        ... ))
        >>> for method, rows in groups(df, "c").items():
        ...     print(f"{method}: {list(rows.setting)}")
        fewer steps: ['ddim-20', 'ddim-100']
        uniform: ['N10-b2', 'N5-b2', 'ddim-100']
        uniform, DDIM 20: ['s20-N3-b0', 's20-N2-b0', 'ddim-20']
    """
    uncached = df.method == "uncached"
    longest, zeros = df.steps == df.steps.max(), df.method == "cached feature -> zeros"
    cached = df[~uncached & longest & ~zeros]
    main_branch = cached.branch.mode().iloc[0] if len(cached) else 0
    out = {FEWER: df[uncached].sort_values(cost)}
    shown = ((df.branch == main_branch) | ~longest) & ~uncached & ~zeros
    for (method, steps), rows in df[shown].groupby(["method", "steps"], sort=False):
        sampler = SAMPLERS.get(rows.sampler.iloc[0], rows.sampler.iloc[0])
        label = method if steps == df.steps.max() else f"{method}, {sampler} {steps}"
        base = df[uncached & (df.steps == steps)]
        out[label] = pd.concat([rows, base]).drop_duplicates("setting").sort_values(cost)
    return out


def pareto(df: pd.DataFrame, out: Path, cost: str, quality: str) -> Path:
    timed = "measured_speedup" in df and df.measured_speedup.notna().any()  # else one panel
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(11 if timed else 6, 4.5), squeeze=False)
    axes = axes[0]
    curves = groups(df, cost)
    colours = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20").colors  # no two curves alike
    for (label, rows), marker, colour in zip(
        curves.items(), itertools.cycle("osx^vDP<>*hX"), itertools.cycle(colours)
    ):
        style = dict(marker=marker, color=colour, label=label, capsize=2)
        error = interval_error(rows, quality)
        axes[0].errorbar(rows[cost], rows[quality], yerr=error, **style)
        if timed:
            axes[1].errorbar(rows.measured_speedup, rows[quality], yerr=error, **style)
    axes[0].set(xlabel=COST, ylabel=QUALITIES[quality])
    if timed:
        axes[1].set(xlabel="measured speedup over the uncached baseline", ylabel=QUALITIES[quality])
    fig.suptitle(heading(df), fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out / f"{quality}_vs_cost.png")


def interval_error(rows: pd.DataFrame, quality: str):
    """Error bars ``(2, N)`` from the ``_lo``/``_hi`` columns of ``quality`` (95% intervals), if any."""
    lo, hi = f"{quality}_lo", f"{quality}_hi"
    if lo not in rows or rows[lo].isna().all():
        return None
    return np.vstack([rows[quality] - rows[lo], rows[hi] - rows[quality]]).clip(0)


def heading(df: pd.DataFrame) -> str:
    """The sampler and timestep spacing of a sweep's rows, as every plot and table names them.

    Example:
        >>> heading(pd.DataFrame(dict(sampler=["PNDMScheduler"], spacing=["trailing"])))
        'PLMS, trailing spacing'
        >>> heading(pd.DataFrame(dict(sampler=["DDIMScheduler"])))  # rows from before spacing was kept
        'DDIM, leading spacing (the model default; not recorded)'
        >>> heading(pd.DataFrame(dict(sampler=["DDIMScheduler"], spacing=["trailing"], stepping=["follow"])))
        'DDIM, trailing spacing, following its timesteps'
    """
    sampler = ", ".join(SAMPLERS.get(s, s) for s in df.sampler.dropna().unique()) if "sampler" in df else "?"
    spacings = df.spacing.dropna().unique() if "spacing" in df else []
    spacing = (
        ", ".join(spacings) + " spacing"
        if len(spacings)
        else "leading spacing (the model default; not recorded)"
    )
    follows = "stepping" in df and (df.stepping == "follow").any()
    return f"{sampler}, {spacing}" + (", following its timesteps" if follows else "")


def with_intervals(df: pd.DataFrame) -> pd.DataFrame:
    """Quality columns that have an interval, as text ``estimate [lo, hi]``."""
    out = df.copy()
    for q in QUALITIES:
        if f"{q}_lo" in df and df[f"{q}_lo"].notna().any():
            out[q] = [
                f"{v:.3g} [{a:.3g}, {b:.3g}]"
                for v, a, b in zip(df[q], df[f"{q}_lo"], df[f"{q}_hi"], strict=True)
            ]
    return out


def per_branch(df: pd.DataFrame, out: Path, cost: str, quality: str) -> Path | None:
    cached = df[(df.method == "uniform") & (df.steps == df.steps.max())]
    if cached.branch.nunique() < 2:
        return None
    interval = cached.groupby("interval").branch.nunique().idxmax()
    rows = cached[cached.interval == interval].sort_values("branch")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(rows.branch + 1, rows[quality], "o-", color="C0")
    ax.set(
        xlabel="paper branch (branch id + 1)", ylabel=QUALITIES[quality], title=f"N = {interval}, per branch"
    )
    twin = ax.twinx()
    twin.plot(rows.branch + 1, rows[cost], "s--", color="C1")
    twin.set_ylabel(COST, color="C1")
    fig.tight_layout()
    return save_figure(fig, out / "per_branch.png")


def sample_grid(folder: Path, settings: list[str], out: Path, count: int) -> Path:
    """One row per setting: its first ``count`` samples (seeds 0 .. count - 1), labelled."""
    missing = [s for s in settings if not (folder / s / "samples_000000.npy").exists()]
    if missing:
        raise SystemExit(f"error: no samples in {folder} for {', '.join(missing)}")
    fig, axes = plt.subplots(len(settings), 1, figsize=(count * 0.6, len(settings) * 0.75), squeeze=False)
    for ax, name in zip(axes[:, 0], settings, strict=True):
        images = np.load(folder / name / "samples_000000.npy")[:count]  # uint8 (N, C, H, W)
        row = np.concatenate(list(images.transpose(0, 2, 3, 1)), axis=1)
        ax.imshow(row.squeeze(-1) if row.shape[-1] == 1 else row, cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out / "samples.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", type=Path, help="the sweep's results.csv")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs, table and a CSV copy")
    p.add_argument("--quality", choices=list(QUALITIES), help="quality column (default: FID if measured)")
    p.add_argument("--grid", nargs="+", metavar="SETTING", help="also draw these settings' first samples")
    p.add_argument("--grid-images", type=int, default=12, help="samples per row of --grid (default 12)")
    p.add_argument(
        "--samples", type=Path, help="the sweep's --out folder with the samples (default: the CSV's)"
    )
    args = p.parse_args()
    if args.grid_images < 1:
        p.error("--grid-images must be at least 1")
    df = pd.read_csv(args.csv)
    cost, quality = "mmacs_per_step", column(df, [args.quality] if args.quality else list(QUALITIES))
    df = df.assign(mmacs_per_step=mmacs_per_step(df))
    args.out.mkdir(parents=True, exist_ok=True)
    finite = df.replace([float("inf")], float("nan"))  # the baseline's PSNR to itself
    written = [pareto(finite, args.out, cost, quality), per_branch(finite, args.out, cost, quality)]
    if args.grid:
        written.append(sample_grid(args.samples or args.csv.parent, args.grid, args.out, args.grid_images))
    if args.csv.resolve() != (args.out / "results.csv").resolve():
        df.drop(columns=cost).to_csv(args.out / "results.csv", index=False)
    cols = ["setting", "method", "steps", "interval", "paper_branch", "n_full", *QUALITIES, cost]
    table = with_intervals(df)[[c for c in [*cols, "mac_speedup", "measured_speedup", "samples"] if c in df]]
    caption = f"{heading(df)}; intervals: 95%, bootstrap over images\n\n"
    (args.out / "table.md").write_text(caption + table.to_markdown(index=False, floatfmt=".3g") + "\n")
    names = ", ".join(p.name for p in written if p)
    print(f"wrote {args.out}: {names}, table.md, results.csv")


if __name__ == "__main__":
    main()
