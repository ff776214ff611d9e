"""Train the small MNIST DDPM that ships in ``assets/ddpm-mnist`` (2 CPU cores, about 85 minutes).

The model is a diffusers ``UNet2DModel`` with three resolution levels (28, 14, 7), so DeepCache has
six skip branches (ids 0..5) to choose from. Training is the standard DDPM epsilon objective with a
linear beta schedule over 1,000 timesteps, AdamW, cosine learning rate and an EMA of the weights.
It is resumable: a checkpoint is written atomically every ``--ckpt-every`` steps, and a rerun with the
same ``--workdir`` continues where it stopped. ``--max-minutes`` caps the wall time.

Example:
    python experiments/ddpm/train_mnist.py --workdir runs/mnist --max-minutes 85 > runs/mnist.log 2>&1
    python experiments/ddpm/train_mnist.py --workdir runs/mnist --export assets/ddpm-mnist
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel

from cachediff.datasets import load_mnist
from cachediff.files import atomic_path

UNET_CONFIG = dict(
    sample_size=28,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64, 96),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=32,
)
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True, help="folder for checkpoints and the loss log")
    p.add_argument("--steps", type=int, default=4000, help="optimizer steps planned (sets the LR schedule)")
    p.add_argument("--batch-size", type=int, default=128, help="images per optimizer step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the weights")
    p.add_argument("--max-minutes", type=float, default=85.0, help="stop (with a checkpoint) after this")
    p.add_argument("--ckpt-every", type=int, default=200, help="checkpoint interval in steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order and noise")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--export", type=Path, help="only export the EMA weights of the last checkpoint here")
    return p.parse_args()


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak at ``args.steps``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def atomic_save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def export(ckpt_path: Path, out: Path) -> None:
    """Write the EMA weights as a ``DDIMPipeline`` folder (fp16 safetensors, DDIM-ready scheduler)."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    unet = UNet2DModel(**UNET_CONFIG)
    ema = EMAModel(unet.parameters(), decay=ckpt["args"]["ema_decay"])
    ema.load_state_dict(ckpt["ema"])
    ema.copy_to(unet.parameters())
    # The paper's DDPM sampler (DDIM's generalized_steps) does not clip the predicted x0; diffusers'
    # default clip_sample=True does at every step and leaves speckles after 100 steps that make FID
    # prefer fewer steps (docs/DDPM_MNIST.md).
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG, clip_sample=False)
    pipe = DDIMPipeline(unet=unet.to(torch.float16), scheduler=scheduler)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "training.json").write_text(
        json.dumps({"step": ckpt["step"], **ckpt["args"]}, indent=2, default=str)
    )
    print(f"exported step {ckpt['step']} to {out}")


def main() -> None:
    args = parse_args()
    ckpt_path = args.workdir / "checkpoint.pt"
    if args.export:
        return export(ckpt_path, args.export)
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)

    # Data: all 60k training digits in memory, scaled to [-1, 1].
    images = (
        torch.from_numpy(load_mnist("train").copy()).float().div(127.5).sub(1).unsqueeze(1)
    )  # (N, 1, 28, 28)

    unet = UNet2DModel(**UNET_CONFIG)
    ema = EMAModel(unet.parameters(), decay=args.ema_decay, use_ema_warmup=True, power=3 / 4)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    noise_scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    gen = torch.Generator().manual_seed(args.seed)
    step = 0
    if ckpt_path.exists():  # resume
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        unet.load_state_dict(ckpt["unet"])
        opt.load_state_dict(ckpt["opt"])
        ema.load_state_dict(ckpt["ema"])
        gen.set_state(ckpt["gen"])
        step = ckpt["step"]
        print(f"resumed at step {step}")

    log_path = args.workdir / "loss.csv"
    new_log = not log_path.exists()
    log = open(log_path, "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "loss", "lr", "seconds"])
    start = time.time()

    def checkpoint() -> None:
        state = dict(unet=unet.state_dict(), opt=opt.state_dict(), ema=ema.state_dict(), gen=gen.get_state())
        atomic_save({**state, "step": step, "args": vars(args) | {"workdir": str(args.workdir)}}, ckpt_path)
        log.flush()

    unet.train()
    while step < args.steps:
        # One DDPM step: random digits, random timesteps, predict the added noise.
        idx = torch.randint(0, len(images), (args.batch_size,), generator=gen)
        x0 = images[idx]  # (B, 1, 28, 28)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, SCHEDULER_CONFIG["num_train_timesteps"], (args.batch_size,), generator=gen)
        loss = torch.nn.functional.mse_loss(unet(noise_scheduler.add_noise(x0, noise, t), t).sample, noise)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.step(unet.parameters())
        step += 1
        writer.writerow(
            [step, f"{loss.item():.5f}", f"{lr_at(step - 1, args):.2e}", f"{time.time() - start:.1f}"]
        )
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
        if step % args.ckpt_every == 0:
            checkpoint()
        if time.time() - start > args.max_minutes * 60:
            print(f"time cap reached at step {step}")
            break
    checkpoint()
    log.close()
    print(f"done at step {step}")


if __name__ == "__main__":
    main()
