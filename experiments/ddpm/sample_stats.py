"""Why FID moves with the step count on the MNIST DDPM: ink and speckles of the saved samples.

For each sweep setting (its first shard of samples, seeds 0..249 by default) and for the MNIST test
images: the mean 8-bit intensity (how much ink) and the number of isolated bright pixels per image
(a pixel above 127 with no neighbour above 64: speckles no MNIST digit has).

Example:
    python experiments/ddpm/sample_stats.py ddim-100 ddim-50 ddim-20 ddim-10 N5-b2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from cachediff.datasets import load_mnist


def sample_stats(images: np.ndarray) -> dict:
    """Mean intensity and isolated bright pixels per image of uint8 ``images`` ``(N, [1,] H, W)``.

    Example:
        >>> x = np.zeros((2, 5, 5), np.uint8); x[0, 2, 2] = 255; x[1, 1:4, 2] = 255
        >>> sample_stats(x)["speckles_per_image"]  # one lone pixel in image 0; a stroke in image 1
        0.5
    """
    x = torch.from_numpy(images.astype(np.float32)).reshape(len(images), 1, *images.shape[-2:])
    ring = torch.ones(1, 1, 3, 3)
    ring[0, 0, 1, 1] = 0  # the 8 neighbours
    lit_neighbours = torch.nn.functional.conv2d((x > 64).float(), ring, padding=1)
    speckles = ((x > 127) & (lit_neighbours == 0)).float().sum((1, 2, 3))  # (N,)
    return dict(mean_intensity=x.mean().item(), speckles_per_image=speckles.mean().item())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("settings", nargs="+", help="setting folders in the sweep folder, e.g. ddim-100")
    p.add_argument("--sweep", type=Path, default=Path("runs/mnist-sweep"), help="the sweep folder")
    p.add_argument("--shard", default="samples_000000.npy", help="which saved shard of each setting")
    p.add_argument("--mnist", type=int, default=2000, help="MNIST test images to compare with")
    args = p.parse_args()
    rows = [("MNIST test", sample_stats(load_mnist("test")[: args.mnist]))]
    for name in args.settings:
        path = args.sweep / name / args.shard
        if not path.exists():
            p.error(f"no samples at {path}: run the sweep for {name} first")
        rows.append((name, sample_stats(np.load(path))))
    print("| samples | mean intensity (0-255) | isolated bright pixels per image |\n|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s['mean_intensity']:.1f} | {s['speckles_per_image']:.3f} |")


if __name__ == "__main__":
    main()
