"""Training report of the shipped tiny Stable Diffusion, written next to its weights.

- ``loss.png``: the autoencoder's and the U-Net's training losses (per step and a moving average), from
  the loss logs of ``--workdir`` (``unet_loss.csv`` is copied beside ``vae_loss.csv``);
- ``samples.png``: ``--per-class`` images of every class, one row per prompt "a photo of a {class}",
  50 PLMS steps at the model card's guidance scale, seed k for column k;
- ``guidance.csv``: the class score and top-1 accuracy (with ``--fid`` also the FID against
  Fashion-MNIST test images, through the pinned Inception network) of ``--images`` images at each
  ``--guidance`` scale; and the per-class accuracy at the card's scale.

Example:
    python -m experiments.sd.report_tiny_sd --workdir runs/tiny-sd --model assets/tiny-sd
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from cachediff.datasets import FASHION_CLASSES  # noqa: E402
from cachediff.files import labelled_grid, save_figure, save_png, write_csv  # noqa: E402
from cachediff.generation import text2image  # noqa: E402
from cachediff.loading import load_pipeline, model_card  # noqa: E402
from cachediff.metrics import fid  # noqa: E402
from cachediff.metrics.class_score import class_score, load_classifier, probabilities  # noqa: E402
from cachediff.pipelines import get_preset  # noqa: E402
from cachediff.prompts import load_prompts  # noqa: E402
from cachediff.scoring import reference_stats  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("runs/tiny-sd"), help="the training run's folder")
    p.add_argument("--model", type=Path, default=Path("assets/tiny-sd"), help="exported pipeline folder")
    p.add_argument("--per-class", type=int, default=8, help="images per class in samples.png")
    p.add_argument("--images", type=int, default=200, help="images per guidance scale (seeds 0..n-1)")
    p.add_argument(
        "--guidance", type=float, nargs="*", default=[1.0, 2.0, 4.0, 7.5], help="guidance scales to "
        "measure (none: skip guidance.csv)",
    )  # fmt: skip
    p.add_argument("--fid", action="store_true", help="also the FID of each scale (slow on a CPU)")
    p.add_argument("--reference-images", type=int, default=2000, help="test images of the FID reference")
    p.add_argument("--steps", type=int, default=50, help="PLMS steps")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if min(args.per_class, args.images, args.steps, args.reference_images) < 1:
        p.error("--per-class, --images, --steps and --reference-images must be >= 1")
    return args


def plot_losses(workdir: Path, model: Path) -> Path:
    """Both stages' losses side by side; the U-Net's log is copied beside the autoencoder's (from a
    training run's ``workdir`` where there is one; a checkout without it plots the shipped copies)."""
    logs = {
        "autoencoder (MSE)": model / "vae_loss.csv",
        "U-Net + text encoder (epsilon MSE)": model / "unet_loss.csv",
    }
    if (workdir / "unet_loss.csv").exists():
        shutil.copy(workdir / "unet_loss.csv", model / "unet_loss.csv")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, (title, path) in zip(axes, logs.items(), strict=True):
        log = pd.read_csv(path)
        loss = log["mse" if "mse" in log else "loss"]
        ax.plot(log["step"], loss, lw=0.5, alpha=0.4, label="per step")
        ax.plot(log["step"], loss.rolling(100, min_periods=1).mean(), lw=1.5, label="moving average (100)")
        ax.set(xlabel="optimizer step (batch 128)", ylabel="loss", yscale="log", title=title)
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, model / "loss.png")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"wrote {plot_losses(args.workdir, args.model)}", flush=True)
    pipe = load_pipeline(get_preset("tiny-sd"), str(args.model))
    pipe.set_progress_bar_config(disable=True)
    card, prompts, classifier = model_card(str(args.model)), load_prompts("fashion"), load_classifier()

    def generate(n: int, guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Images of seeds 0..n-1, seed k prompted with class k mod 10, and their labels."""
        labels = torch.arange(n) % len(prompts)
        images = [
            text2image(
                pipe, seeds.tolist(), args.steps, [prompts[k] for k in labels[seeds]], guidance_scale=guidance
            )
            for seeds in torch.arange(n).split(100)
        ]
        return torch.cat(images), labels

    # One row per class, seeds 0.. in the columns.
    images, labels = generate(args.per_class * len(prompts), card["guidance_scale"])
    rows = {name: images[labels == k] for k, name in enumerate(FASHION_CLASSES)}
    save_png(
        args.model / "samples.png", labelled_grid(rows, [f"seed {k}" for k in range(args.per_class)], 64)
    )
    print(f"wrote {args.model / 'samples.png'}", flush=True)

    if not args.guidance:
        return
    if args.fid:
        inception = fid.load_inception()
        reference = reference_stats("fashion-mnist", args.workdir, args.reference_images)
    results = []
    for g in args.guidance:
        images, labels = generate(args.images, g)
        score, accuracy = class_score(images, labels, classifier)
        results.append(dict(guidance_scale=g, images=args.images, class_score=score, accuracy=accuracy))
        if args.fid:
            features = fid.inception_features(images, inception, progress=False)
            results[-1]["fid"] = fid.frechet_distance(*fid.feature_stats(features), *reference)
        print(results[-1], flush=True)
        if g == card["guidance_scale"]:
            hits = probabilities(images, classifier).argmax(1) == labels
            per_class = {
                name: float(hits[labels == k].float().mean()) for k, name in enumerate(FASHION_CLASSES)
            }
            print("per-class accuracy:", per_class, flush=True)
            results[-1] |= {f"accuracy_{name}": v for name, v in per_class.items()}
    write_csv(results, args.model / "guidance.csv")
    print(f"wrote {args.model / 'guidance.csv'}")


if __name__ == "__main__":
    main()
