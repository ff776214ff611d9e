"""Plots and a Markdown table from a sweep CSV (``experiments/ddpm/sweep_mnist.py``'s results.csv).

Quality against cost (average MACs and measured speedup: the Pareto view), DeepCache vs plain DDIM
with fewer steps, and FID and MACs per branch.

Example:
    python scripts/plot_sweep.py runs/mnist-sweep/results.csv --out docs/results/mnist
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

COST = "gmacs_per_image_per_100_steps"


def groups(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Curves of the Pareto view: one per method (plain DDIM with fewer steps, each schedule), at the
    sweep's main branch; the uncached 100-step baseline belongs to every curve as its costliest point."""
    if "method" not in df:  # CSVs of older sweeps
        df = df.assign(method=["DDIM, fewer steps" if i == 1 else "uniform" for i in df.interval])
    cached = df[df.interval > 1]
    main_branch = cached.branch.mode().iloc[0] if len(cached) else 0
    base = df[(df.steps == df.steps.max()) & (df.method == "DDIM, fewer steps")]
    out = {}
    for method, rows in df[(df.branch == main_branch) | (df.interval == 1)].groupby("method", sort=False):
        if method == "uniform":
            rows = rows[rows.schedule == "uniform"] if "schedule" in rows else rows
        out[method] = pd.concat([rows, base]).drop_duplicates("setting").sort_values(COST)
    return out


def pareto(df: pd.DataFrame, out: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for (label, rows), marker in zip(groups(df).items(), "osx^vDP<>", strict=False):
        axes[0].plot(rows[COST] * 1000, rows.fid, marker=marker, label=label)
        axes[1].plot(rows.measured_speedup, rows.fid, marker=marker, label=label)
    axes[0].set(xlabel="MMACs per image per step (average over 100 steps)", ylabel="FID (lower is better)")
    axes[1].set(xlabel="measured speedup over 100 DDIM steps", ylabel="FID")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fid_vs_cost.png", dpi=120)


def per_branch(df: pd.DataFrame, out: Path) -> None:
    uniform = df.method == "uniform" if "method" in df else df.reuse == "cache"
    rows = df[(df.interval == 5) & uniform].sort_values("branch")
    if not len(rows):
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(rows.paper_branch, rows.fid, "o-", color="C0")
    ax.set(xlabel="paper branch (branch id + 1)", ylabel="FID", title="N = 5, per branch")
    twin = ax.twinx()
    twin.plot(rows.paper_branch, rows.gmacs_per_image_per_100_steps * 1000, "s--", color="C1")
    twin.set_ylabel("MMACs per step (average)", color="C1")
    fig.tight_layout()
    fig.savefig(out / "per_branch.png", dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", type=Path, help="the sweep's results.csv")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs, table and a CSV copy")
    args = p.parse_args()
    df = pd.read_csv(args.csv)
    args.out.mkdir(parents=True, exist_ok=True)
    pareto(df, args.out)
    per_branch(df, args.out)
    df.to_csv(args.out / "results.csv", index=False)
    cols = ["setting", "method", "steps", "interval", "paper_branch", "full_steps", "fid", COST]
    cols += ["mac_speedup", "measured_speedup", "psnr_vs_ddim100_db", "samples"]
    cols = [c for c in cols if c in df]
    (args.out / "table.md").write_text(df[cols].to_markdown(index=False, floatfmt=".3g") + "\n")
    print(f"wrote {args.out}/fid_vs_cost.png, per_branch.png, table.md, results.csv")


if __name__ == "__main__":
    main()
