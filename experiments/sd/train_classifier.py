"""Train the Fashion-MNIST classifier of the class score (``cachediff.metrics.class_score``).

AdamW with a cosine learning rate over ``--epochs`` passes of the 60k training images (28 x 28 padded
to 32 x 32 with black, as the tiny Stable Diffusion makes them; random shifts of up to 2 pixels), then
the test accuracy on the 10k test images. Writes ``model.safetensors`` (fp16) and ``training.json``
(accuracy, SHA-256, command) into ``--out``; pin the printed SHA-256 in ``class_score.py``.

Example:
    python -m experiments.sd.train_classifier --out assets/fashion-classifier --epochs 6
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from cachediff.datasets import load_fashion_mnist
from cachediff.files import atomic_path
from cachediff.metrics.class_score import FashionClassifier, class_score_of, load_classifier, probabilities
from experiments.sd.train_tiny_sd import pixels


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for model.safetensors and training.json")
    p.add_argument("--epochs", type=int, default=6, help="passes over the training images")
    p.add_argument("--batch-size", type=int, default=128, help="images per optimizer step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and data order")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args(argv)
    if min(args.epochs, args.batch_size) < 1 or args.lr <= 0:
        p.error("--epochs and --batch-size must be >= 1, --lr > 0")
    return args


def shift(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random translations of up to ``pad`` pixels (the same for a whole batch: cheap, and enough)."""
    dx, dy = torch.randint(-pad, pad + 1, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    x, y = pixels(train_x), torch.from_numpy(train_y.astype("int64"))  # (60000, 1, 32, 32), (60000,)
    model, gen = FashionClassifier(), torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * math.ceil(len(x) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.15)
    start, step = time.time(), 0
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), args.batch_size):
            idx = order[i : i + args.batch_size]
            loss = F.cross_entropy(model(shift(x[idx], gen)), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        print(
            f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f} {time.time() - start:.0f}s", flush=True
        )
    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "model.safetensors"
    with atomic_path(weights) as tmp:
        save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    shipped = load_classifier(weights, sha256=digest)  # the accuracy of the fp16 file, as it ships
    labels = torch.from_numpy(test_y.astype("int64"))
    score, accuracy = class_score_of(probabilities(pixels(test_x), shipped), labels)
    record = dict(
        test_accuracy=accuracy, test_class_score=score, sha256=digest, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, seconds=round(time.time() - start),
        command="python -m experiments.sd.train_classifier " + " ".join(sys.argv[1:]),
    )  # fmt: skip
    (args.out / "training.json").write_text(json.dumps(record, indent=2))
    print(f"test accuracy {accuracy:.4f}, class score {score:.4f}; sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
