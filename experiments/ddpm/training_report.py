"""Loss curve and sample grid of the shipped MNIST DDPM, written next to its weights.

Example:
    python experiments/ddpm/training_report.py --log runs/mnist/loss.csv --model assets/ddpm-mnist
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from cachediff.files import grid, save_figure, save_png  # noqa: E402
from cachediff.generation import unconditional  # noqa: E402
from cachediff.loading import load_pipeline  # noqa: E402
from cachediff.pipelines import get_preset  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", type=Path, default=Path("runs/mnist/loss.csv"), help="training loss CSV")
    p.add_argument("--model", type=Path, default=Path("assets/ddpm-mnist"), help="exported model folder")
    p.add_argument("--samples", type=int, default=64, help="images in the grid (seeds 0..n-1)")
    p.add_argument("--steps", type=int, default=100, help="DDIM steps")
    args = p.parse_args()

    # Loss curve: raw per-step loss and a 100-step moving average.
    log = pd.read_csv(args.log)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(log["step"], log["loss"], lw=0.5, alpha=0.4, label="per step")
    ax.plot(log["step"], log["loss"].rolling(100, min_periods=1).mean(), lw=1.5, label="moving average (100)")
    ax.set(
        xlabel="optimizer step (batch 128)", ylabel="epsilon MSE", yscale="log", title="MNIST DDPM training"
    )
    ax.legend()
    fig.tight_layout()
    save_figure(fig, args.model / "loss.png")

    # Sample grid: 100 DDIM steps, seed k for image k.
    pipe = load_pipeline(get_preset("ddpm-mnist"), str(args.model))
    with torch.no_grad():
        images = unconditional(pipe, list(range(args.samples)), args.steps)
    save_png(args.model / "samples.png", grid(images, rows=int(args.samples**0.5)))
    print(f"wrote {args.model / 'loss.png'} and {args.model / 'samples.png'}")


if __name__ == "__main__":
    main()
