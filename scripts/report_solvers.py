"""Caching against fewer steps on one solver (issue 27): the sweep's rows, paired image by image.

Every caching setting of a sweep (``scripts/sweep.py --suites steps interval times``) is set against
the fewer-steps run of the same solver whose MAC speedup is nearest to its own, and every forecast in
the noise level (sigma, lambda) or fitted on the shallow feature (pure or anchored) against the same
forecast in the timestep. Differences are of the
mean per-image PSNR to the converged solution of the same noise, *paired* over the same seeds (a 95%
bootstrap interval of the per-seed differences): far sharper than two separate intervals. The
samples and the converged reference are read from the sweep's folders (the CSV alone holds no
per-image values). ``--seeds 500 1000`` scores a second seed set (seeds 500..999, sampled by a sweep
with ``--samples 1000``): every value of the tables is then computed from those seeds' images.

Writes ``<out>/solver.md`` (both tables), ``paired.csv`` and ``solver.png`` (fidelity against MAC
speedup, fewer steps as a line, every caching act and variable as a marker).

Example:
    python scripts/report_solvers.py docs/results/solvers/dpmpp-25.csv --samples runs/solvers/dpmpp-25 \\
        --converged runs/converged/converged-dpmpp2m-trailing/dpmpp2m-trailing-100 \\
        --out docs/results/solvers/dpmpp-25
"""

from __future__ import annotations

import argparse
import ast
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cachediff import metrics  # noqa: E402
from cachediff.files import save_figure, write_csv  # noqa: E402
from cachediff.rows import is_missing  # noqa: E402
from cachediff.sweep import unit_range  # noqa: E402

NAMES = {
    "DPMSolverMultistepScheduler": "DPM-Solver++ 2M",
    "EulerDiscreteScheduler": "Euler",
    "UniPCMultistepScheduler": "UniPC",
    "DDIMScheduler": "DDIM",
    "PNDMScheduler": "PLMS",
}


FIDELITY = "psnr_conv_mean_db"  # a setting's fidelity: mean per-image PSNR to the converged solution


def read_samples(folder: Path, n: int) -> np.ndarray:
    """The first ``n`` samples (by seed, from 0) of a sweep setting's folder, uint8 ``(n, C, H, W)``."""
    files = sorted(folder.glob("samples_[0-9]*.npy"), key=lambda p: int(re.findall(r"\d+", p.name)[0]))
    arrays, seen = [], 0
    for path in files:
        if seen >= n:
            break
        start = int(re.findall(r"\d+", path.name)[0])
        if start != seen:
            raise ValueError(f"{path}: expected the shard of seed {seen}, found one from seed {start}")
        arrays.append(np.load(path))
        seen += len(arrays[-1])
    if seen < n:
        raise ValueError(f"{folder} holds {seen} samples, fewer than the {n} scored")
    return np.concatenate(arrays)[:n]


def psnr_per_image(samples: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB, capped as the sweep caps it) of uint8 samples to uint8 reference images."""
    mse = metrics.mse_per_image(unit_range(samples), unit_range(reference))
    return metrics.psnr_per_image(mse)


def nearest_fewer_steps(row: pd.Series, rows: pd.DataFrame) -> pd.Series | None:
    """The uncached run of fewer steps whose MAC speedup is nearest ``row``'s (on a log scale), if any."""
    fewer = rows[(rows.method == "uncached") & (rows.mac_speedup > 1)]
    if fewer.empty:
        return None
    return fewer.loc[(np.log(fewer.mac_speedup) - math.log(row.mac_speedup)).abs().idxmin()]


def act(row: pd.Series, cuts: bool = False) -> str:
    """A row's act, e.g. ``replay`` or ``forecast 2 in lambda``; with ``cuts``, its branch and any
    per-phase cuts too (``forecast 3 in timestep, b0, from 0.5 b2``)."""
    if row.method == "uncached":
        return "fewer steps"
    name = "replay" if row.reuse == "cache" else f"forecast {int(row.order)} in {row.time}"
    if not cuts:
        return name
    phases = "".join(f", from {s} b{b}" for s, b in phases_of(row))
    kept = "" if is_missing(row.get("refresh")) or row.refresh else ", full steps' features"
    return f"{name}, b{int(row.branch)}{phases}{kept}"


def phases_of(row: pd.Series) -> list:
    """A row's per-phase cuts ``[(start, branch), ...]`` (none: ``[]``)."""
    return [] if is_missing(row.get("phases")) else list(ast.literal_eval(row.phases))


def single_cuts(row: pd.Series, rows: pd.DataFrame) -> pd.DataFrame:
    """For a row with per-phase cuts, the rows of the same act and interval that cut at one of its
    branches throughout."""
    branches = {int(row.branch), *(b for _, b in phases_of(row))}
    same = (rows.interval == row.interval) & (rows.reuse == row.reuse) & (rows.branch.isin(branches))
    for column in ("order", "time"):
        same &= (rows[column] == row[column]) | (rows[column].isna() & pd.isna(row[column]))
    return rows[same & rows.apply(lambda r: not phases_of(r), axis=1)]


def varied_cuts(rows: pd.DataFrame) -> bool:
    """Whether the caching rows cut at more than one branch (or by phase): then acts name their cuts."""
    cached = rows[rows.method != "uncached"]
    return cached.branch.nunique() > 1 or ("phases" in rows and cached.phases.notna().any())


def paired_rows(rows: pd.DataFrame, psnr: dict[str, np.ndarray]) -> list[dict]:
    """Each caching setting against its fewer-steps run and, for a forecast in sigma, lambda or fitted
    on the shallow feature, against the same forecast in the timestep: paired differences of mean
    per-image PSNR; with per-phase cuts, also against the same act at each of its branches alone."""
    out, cuts = [], varied_cuts(rows)
    by_name = rows.set_index("setting")
    for _, r in rows[rows.method != "uncached"].iterrows():
        against = [f for f in [nearest_fewer_steps(r, rows)] if f is not None]
        twin = r.setting.rsplit("-", 1)[0] + "-timestep"
        if (
            r.reuse == "forecast"
            and r.time in ("sigma", "lambda", "shallow", "anchored")
            and twin in by_name.index
        ):
            against.append(by_name.loc[twin].rename(twin))
        against += [o.rename(o.setting) for _, o in single_cuts(r, rows).iterrows()] if phases_of(r) else []
        for other in against:
            name = other.name if other.name in psnr else other.setting
            diff = metrics.mean_interval(psnr[r.setting] - psnr[name])
            out.append(
                dict(setting=r.setting, act=act(r, cuts), interval=int(r.interval), mac_speedup=r.mac_speedup)
                | dict(against=name, against_mac_speedup=by_name.loc[name].mac_speedup)
                | diff.columns("difference_db")
            )
    return out


def verdict(lo: float, hi: float) -> str:
    return "better" if lo > 0 else "worse" if hi < 0 else "within the interval"


def cell(r, column: str, digits: int = 2) -> str:
    return f"{r[column]:.{digits}f} [{r[column + '_lo']:.{digits}f}, {r[column + '_hi']:.{digits}f}]"


def tables(rows: pd.DataFrame, pairs: pd.DataFrame) -> str:
    """Markdown: every setting by budget with its difference to fewer steps; then the variables."""
    fewer = pairs[pairs.against.isin(rows[rows.method == "uncached"].setting)]
    lines = ["(no uncached run of fewer steps in this sweep: no comparison with fewer steps)"]
    if len(fewer):
        lines = [
            "| N | setting | act | MAC speedup | PSNR to converged, dB [95% CI] | fewer steps (MAC speedup) "
            "| difference, dB [95% CI] | |",
            "|---|---|---|---|---|---|---|---|",
        ]
    for _, p in fewer.sort_values(["interval", "difference_db"], ascending=[True, False]).iterrows():
        r = rows.set_index("setting").loc[p.setting]
        lines.append(
            f"| {p.interval} | {p.setting} | {p.act} | {p.mac_speedup:.2f}x | "
            f"{cell(r, 'psnr_conv_mean_db')} | {p.against} ({p.against_mac_speedup:.2f}x) | "
            f"{cell(p, 'difference_db')} | {verdict(p.difference_db_lo, p.difference_db_hi)} |"
        )
    variables = pairs[~pairs.index.isin(fewer.index)]
    if len(variables):
        lines += [
            "",
            "Against its twin: the same forecast in the timestep; with per-phase cuts, the same act at "
            "each of its branches alone (paired):",
            "",
            "| setting | against | difference, dB [95% CI] | |",
            "|---|---|---|---|",
        ]
        for _, p in variables.iterrows():
            lines.append(
                f"| {p.setting} | {p.against} | {cell(p, 'difference_db')} | "
                f"{verdict(p.difference_db_lo, p.difference_db_hi)} |"
            )
    return "\n".join(lines) + "\n"


MARKERS = {"replay": "s", "timestep": "o", "sigma": "^", "lambda": "D", "shallow": "*", "anchored": "P"}


def plot(rows: pd.DataFrame, title: str, path: Path) -> Path:
    """Fidelity against MAC speedup: fewer steps as a line, each act a marker (nudged sideways by act,
    so that acts at one speedup do not hide each other)."""
    fig, ax = plt.subplots(figsize=(9, 6))
    fewer = rows[rows.method == "uncached"].sort_values("mac_speedup")
    ax.plot(fewer.mac_speedup, fewer.psnr_conv_mean_db, "k-", marker="o", label="uncached, fewer steps")
    cuts = varied_cuts(rows)
    groups = list(rows[rows.method != "uncached"].groupby(rows.apply(act, axis=1, cuts=cuts)))
    for i, (label, group) in enumerate(groups):
        key = "replay" if group.reuse.iloc[0] == "cache" else group.time.iloc[0]
        nudge = 1 + 0.006 * (i - (len(groups) - 1) / 2)  # +-2% at most
        ax.errorbar(group.mac_speedup * nudge, group.psnr_conv_mean_db, capsize=2, linestyle="none",
                    yerr=[group.psnr_conv_mean_db - group.psnr_conv_mean_db_lo,
                          group.psnr_conv_mean_db_hi - group.psnr_conv_mean_db],
                    marker=MARKERS[key], mfc="none" if " 3 " in label else None, label=label)  # fmt: skip
    ax.set(
        xlabel="MAC speedup over the uncached run",
        ylabel="PSNR to the converged solution (dB, mean per image)",
    )
    ax.set_title(title.replace(": ", ":\n", 1), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", type=Path, help="the sweep's CSV (psnr_conv_mean_db columns: --converged-steps)")
    p.add_argument("--samples", type=Path, required=True, help="the sweep's --out folder (its samples)")
    p.add_argument("--converged", type=Path, required=True, help="the converged reference's sample folder")
    p.add_argument("--out", type=Path, required=True, help="folder for solver.md, paired.csv, solver.png")
    p.add_argument("--model-name", default="tiny SD", help="the model, as the title names it")
    p.add_argument(
        "--seeds", type=int, nargs=2, metavar=("START", "STOP"),
        help="score seeds START..STOP-1 instead of the CSV's (e.g. a second seed set)",
    )  # fmt: skip
    args = p.parse_args(argv)
    rows = pd.read_csv(args.csv)
    if FIDELITY not in rows or rows[FIDELITY].isna().any():
        raise SystemExit(
            f"error: {args.csv} has rows without psnr_conv_mean_db (sweep with --converged-steps)"
        )
    start, stop = args.seeds or (0, int(rows.fidelity_images.min()))
    if not 0 <= start < stop:
        p.error(f"--seeds needs 0 <= START < STOP, got {start} {stop}")
    reference = read_samples(args.converged, stop)[start:]
    psnr = {s: psnr_per_image(read_samples(args.samples / s, stop)[start:], reference) for s in rows.setting}
    if args.seeds:  # the CSV's values are of its own seeds
        cells = [metrics.mean_interval(psnr[s]).columns(FIDELITY) for s in rows.setting]
        rows[list(cells[0])] = pd.DataFrame(cells, index=rows.index)
    pairs = pd.DataFrame(paired_rows(rows, psnr))
    base = rows[rows.mac_speedup == 1].iloc[0]
    sampler = NAMES.get(base.sampler, base.sampler)
    seeds = f"seeds {start}..{stop - 1}" if args.seeds else f"{stop} seeds"
    title = f"{args.model_name}, {sampler} {base.steps} steps, {base.spacing} spacing: {seeds}"
    title += f", to {base.converged}"
    args.out.mkdir(parents=True, exist_ok=True)
    text = f"{title}\n\n" + tables(rows, pairs)
    (args.out / "solver.md").write_text(text)
    write_csv(pairs.to_dict("records"), args.out / "paired.csv")
    plot(rows, title, args.out / "solver.png")
    print(text)
    print(f"wrote {args.out / 'solver.md'}, paired.csv and solver.png")


if __name__ == "__main__":
    main()
