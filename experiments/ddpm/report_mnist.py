"""The tables of docs/DDPM_MNIST.md, as Markdown, from the MNIST sweep's results.csv.

Paper Table 2 (interval), Table 5 (zeros), Tables 4/6 (DeepCache against plain DDIM at the nearest
MAC budget), Table 12 (branch), the schedules at each budget (issue 5), replay against the forecast
of the deep feature at each budget (issue 15) and FID against the DDIM step count. Settings not yet
measured are listed under each table, never left out silently.

Example:
    python experiments/ddpm/report_mnist.py runs/mnist-sweep/results.csv --out docs/results/mnist/tables.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from cachediff.files import atomic_path
from cachediff.suites import FORECAST_ORDERS, SCHEDULES, Plan

PLAN = Plan()  # the suites of the MNIST sweep: branch 2, intervals 2, 3, 5, 10, budgets 5, 10
BRANCH, INTERVALS, BUDGETS = PLAN.branch, PLAN.intervals, PLAN.budgets
CURVE = (100, 76, 68, 61, 56, 50, 30, 20, 10)  # the step counts planned: the curve and steps suites
COLUMNS = {
    "setting": "setting",
    "n_full": "full steps",
    "fid": "FID",
    "mmacs": "MMACs / step",
    "mac_speedup": "MAC bound",
    "measured_speedup": "measured speedup",
    "psnr_db": "PSNR to DDIM 100",
}


def markdown(rows: pd.DataFrame, wanted: list[str], columns: dict = COLUMNS) -> str:
    """A Markdown table of ``wanted`` settings in that order, with a line naming those not measured.

    Example:
        >>> df = pd.DataFrame([dict(setting="a", fid=1.234)])
        >>> print(markdown(df, ["a", "b"], {"setting": "setting", "fid": "FID"}))
        | setting | FID |
        |---|---|
        | a | 1.23 |
        <BLANKLINE>
        Not yet measured: b.
    """
    found = rows.set_index("setting")
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    for name in (w for w in wanted if w in found.index):
        r = found.loc[name]
        cells = [name] + [_cell(c, r.get(c)) for c in list(columns)[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    missing = [w for w in wanted if w not in found.index]
    return "\n".join(lines) + (f"\n\nNot yet measured: {', '.join(missing)}." if missing else "")


def _cell(column: str, value) -> str:
    if value is None or pd.isna(value) or value == float("inf"):
        return "-"
    if column in ("mac_speedup", "measured_speedup"):
        return f"{value:.2f}x"
    if column == "psnr_db":
        return f"{value:.1f} dB"
    if column == "n_full":
        return f"{value:g}"
    return f"{value:.3g}" if column == "mmacs" else f"{value:.2f}"


def equal_macs(df: pd.DataFrame, setting: str, tolerance: float = 0.03) -> str | None:
    """The plain DDIM run (fewer steps) whose MACs are nearest those of ``setting``, if within
    ``tolerance`` (relative); ``None`` if there is none."""
    plain = df[(df.method == "uncached") & (df.steps < PLAN.baseline)]
    row = df[df.setting == setting]
    if plain.empty or row.empty:
        return None
    gap = (plain.mac_speedup / row.mac_speedup.iloc[0] - 1).abs()
    return plain.setting.loc[gap.idxmin()] if gap.min() <= tolerance else None


def report(df: pd.DataFrame, branches: int = 6) -> str:
    df = df.assign(mmacs=df.gmacs_per_image * 1000 / PLAN.baseline)
    b, measured = BRANCH, set(df.setting)
    schedules = [s for s in sorted(SCHEDULES) if any(f"N{n}-b{b}-{s}" in measured for n in BUDGETS)]
    curve = sorted({*CURVE, *df[df.method == "uncached"].steps}, reverse=True)
    sections = [
        ("Table 2: interval N at branch 2", ["ddim-100"] + [f"N{n}-b{b}" for n in INTERVALS]),
        ("Table 5: the cached feature replaced by zeros", [f"N5-b{b}", f"N5-b{b}-zeros"]),
        ("Table 12: every branch at N = 5", [f"N5-b{i}" for i in range(branches)]),
        ("FID against the DDIM step count", [f"ddim-{k}" for k in curve]),
    ]
    out = [f"### {title}\n\n{markdown(df, wanted)}" for title, wanted in sections]
    pairs = [(f"N{n}-b{b}", equal_macs(df, f"N{n}-b{b}")) for n in INTERVALS]
    out.insert(2, "### Tables 4/6: DeepCache against plain DDIM at the nearest MACs\n\n" + _pairs(df, pairs))
    for n in BUDGETS:
        names = [f"N{n}-b{b}"] + [f"N{n}-b{b}-{s}" for s in schedules]
        out.append(f"### Schedules at the budget of N = {n}\n\n{markdown(df, _with_partners(df, names))}")
    for n in BUDGETS:  # replay (uniform, adaptive) against the forecast of orders 2 and 3 (issue 15)
        names = [
            f"N{n}-b{b}{a}{f}" for f in ("", *(f"-f{k}" for k in FORECAST_ORDERS)) for a in ("", "-adaptive")
        ]
        out.append(f"### Forecast at the budget of N = {n}\n\n{markdown(df, _with_partners(df, names))}")
    shorter = df[(df.method != "uncached") & (df.steps < PLAN.baseline)]
    for steps, rows in sorted(shorter.groupby("steps"), reverse=True):
        title = f"DeepCache over {steps} DDIM steps, with plain DDIM at the same MACs"
        names = [f"ddim-{steps}", *_with_partners(df, sorted(rows.setting))]
        out.append(f"### {title}\n\n{markdown(df, names)}")
    return "\n\n".join(out) + "\n"


def _with_partners(df: pd.DataFrame, names: list[str]) -> list[str]:
    """``names`` followed by the plain DDIM runs at their MACs, fewest steps last."""
    partners = {equal_macs(df, s) for s in names} - {None}
    steps = df.set_index("setting").steps
    return names + sorted(partners, key=lambda x: -steps[x])


def _pairs(df: pd.DataFrame, pairs: list[tuple[str, str | None]]) -> str:
    lines = ["| DeepCache | MAC bound | FID | plain DDIM | MAC bound | FID |", "|---|---|---|---|---|---|"]
    found = df.set_index("setting")
    for cached, plain in pairs:
        if cached in found.index and plain in found.index:
            cells = [
                f"{x} | {found.loc[x].mac_speedup:.2f}x | {found.loc[x].fid:.2f}" for x in (cached, plain)
            ]
            lines.append(f"| {cells[0]} | {cells[1]} |")
    missing = [c for c, p in pairs if c not in found.index or p is None]
    note = f"\n\nNot yet measured: {', '.join(missing)} or plain DDIM at its MACs." if missing else ""
    return "\n".join(lines) + note


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", type=Path, help="the sweep's results.csv")
    p.add_argument("--out", type=Path, help="write the Markdown to this file (default: print it)")
    args = p.parse_args()
    if not args.csv.exists():
        p.error(f"{args.csv} does not exist (run make mnist-results first)")
    text = report(pd.read_csv(args.csv))
    if args.out is None:
        print(text, end="")
        return
    with atomic_path(args.out) as tmp:
        tmp.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
