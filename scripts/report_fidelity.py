"""The fidelity instrument in one table and one plot: PSNR to the converged solution of the same noise
against the step count, per sampler and timestep spacing, from the CSVs of ``make fidelity-results``.

Example:
    python scripts/report_fidelity.py docs/results/fidelity/*.csv --out docs/results/fidelity
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from cachediff.files import save_figure  # noqa: E402

NAMES = {
    "PNDMScheduler": "PLMS",
    "DPMSolverMultistepScheduler": "DPM-Solver++ 2M",
    "EulerDiscreteScheduler": "Euler",
}


def curves(paths: list[Path]) -> pd.DataFrame:
    """The uncached rows of every CSV: sampler, spacing, steps and the fidelity columns."""
    rows = pd.concat([pd.read_csv(p) for p in paths])
    rows = rows[rows.method == "uncached"].copy()
    rows["sampler"] = [NAMES.get(s, s) for s in rows.sampler]
    return rows.sort_values(["sampler", "spacing", "steps"])


def cell(row, column: str) -> str:
    return f"{row[column]:.1f} [{row[column + '_lo']:.1f}, {row[column + '_hi']:.1f}]"


def table(rows: pd.DataFrame) -> str:
    """Markdown: one line per sampler, spacing and step count."""
    lines = [
        "| sampler | spacing | steps | PSNR to converged, dB: mean per image [95% CI] | pooled [95% CI] "
        "| images |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in rows.iterrows():
        lines.append(
            f"| {r.sampler} | {r.spacing} | {r.steps} | {cell(r, 'psnr_conv_mean_db')} | "
            f"{cell(r, 'psnr_conv_db')} | {r.fidelity_images} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: pd.DataFrame, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (sampler, spacing), group in rows.groupby(["sampler", "spacing"]):
        error = [
            group.psnr_conv_mean_db - group.psnr_conv_mean_db_lo,
            group.psnr_conv_mean_db_hi - group.psnr_conv_mean_db,
        ]
        style = "--" if spacing == "leading" else "-"
        ax.errorbar(group.steps, group.psnr_conv_mean_db, yerr=error, fmt="o" + style, capsize=3,
                    label=f"{sampler}, {spacing}")  # fmt: skip
    ax.set(xlabel="steps", ylabel="PSNR to the converged solution (dB, mean per image)",
           title=f"tiny SD: fidelity to {rows.converged.iloc[0]}")  # fmt: skip
    ax.title.set_fontsize(8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", type=Path, nargs="+", help="sweep CSVs with psnr_conv_mean_db columns")
    p.add_argument("--out", type=Path, required=True, help="folder for fidelity.md and fidelity.png")
    args = p.parse_args(argv)
    rows = curves(args.csv)
    if "psnr_conv_mean_db" not in rows or rows.psnr_conv_mean_db.isna().all():
        raise SystemExit("error: the CSVs hold no psnr_conv_mean_db (run the sweeps with --converged-steps)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fidelity.md").write_text(table(rows))
    plot(rows, args.out / "fidelity.png")
    print(table(rows))
    print(f"wrote {args.out / 'fidelity.md'} and fidelity.png")


if __name__ == "__main__":
    main()
