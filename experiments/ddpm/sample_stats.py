"""Why FID moves with the step count on the MNIST DDPM: ink and speckles of the saved samples.

For each sweep setting (its first shard of samples, seeds 0..249 by default) and for the MNIST test
images: the mean 8-bit intensity (how much ink), the number of isolated bright pixels per image
(a pixel above 127 with no neighbour above 64: speckles no MNIST digit has) and the background level
(the mean of the pixels below 64: faint grey speckle that costs PSNR little; MNIST's test images: 1.1).

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
    """Mean intensity, isolated bright pixels per image and background level of uint8 ``images``
    ``(N, [1,] H, W)``.

    Example:
        >>> x = np.zeros((2, 5, 5), np.uint8); x[0, 2, 2] = 255; x[1, 1:4, 2] = 255
        >>> sample_stats(x)["speckles_per_image"]  # one lone pixel in image 0; a stroke in image 1
        0.5
        >>> x[:, 0, :] = 10; round(sample_stats(x)["background"], 4)  # 10 on 10 of the 46 dark pixels
        2.1739
    """
    x = torch.from_numpy(images.astype(np.float32)).reshape(len(images), 1, *images.shape[-2:])
    ring = torch.ones(1, 1, 3, 3)
    ring[0, 0, 1, 1] = 0  # the 8 neighbours
    lit_neighbours = torch.nn.functional.conv2d((x > 64).float(), ring, padding=1)
    speckles = ((x > 127) & (lit_neighbours == 0)).float().sum((1, 2, 3))  # (N,)
    background = x[x < 64].mean().item()
    return dict(
        mean_intensity=x.mean().item(), speckles_per_image=speckles.mean().item(), background=background
    )


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
    print("| samples | mean intensity (0-255) | isolated bright pixels per image | background level |")
    print("|---|---|---|---|")
    for name, s in rows:
        print(
            f"| {name} | {s['mean_intensity']:.1f} | {s['speckles_per_image']:.3f} | {s['background']:.2f} |"
        )


if __name__ == "__main__":
    main()
