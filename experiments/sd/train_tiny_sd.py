"""Train the tiny Stable Diffusion on Fashion-MNIST (2 CPU cores), resumable across sessions.

Stages, each checkpointed atomically in ``--workdir`` and skipped once done:

1. ``vae``: the ``AutoencoderKL`` (MSE reconstruction + KL 1e-6, as SD's autoencoder without its
   perceptual and adversarial terms); then the latent scaling factor 1 / std, as SD's 0.18215. The
   result is written to ``--vae-dir`` (``assets/tiny-sd/vae``, 1.3 MB) and committed, so that a new
   checkout, which has no ``--workdir``, starts at stage 2;
2. ``latents``: the posterior mean and std of all 60k training images, encoded once;
3. ``unet``: the ``UNet2DConditionModel`` and the ``CLIPTextModel`` jointly, epsilon objective on
   latents sampled from the posterior, SD v1.5's noise schedule, prompts from the templates with
   10% empty (classifier-free guidance), AdamW, cosine learning rate, EMA of both.

``--max-minutes`` caps the wall time of one invocation; run it again with the same ``--workdir`` to
continue. ``--export`` writes the EMA weights as a ``StableDiffusionPipeline`` folder (fp16
safetensors) with the prompts, the guidance scale and the training config.

Example:
    python -m experiments.sd.train_tiny_sd --workdir runs/tiny-sd --max-minutes 170 > runs/tiny-sd.log 2>&1
    python -m experiments.sd.train_tiny_sd --workdir runs/tiny-sd --export assets/tiny-sd
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.training_utils import EMAModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from cachediff.datasets import load_fashion_mnist
from cachediff.files import atomic_path, grid, save_png
from experiments.sd import tiny_sd


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True, help="folder for checkpoints and loss logs")
    p.add_argument("--vae-steps", type=int, default=2000, help="autoencoder optimizer steps")
    p.add_argument("--unet-steps", type=int, default=2500, help="U-Net optimizer steps planned (LR schedule)")
    p.add_argument("--batch-size", type=int, default=128, help="images per optimizer step")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate of the U-Net stage")
    p.add_argument("--vae-lr", type=float, default=1e-3, help="peak AdamW learning rate of the autoencoder")
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps of each stage")
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the U-Net and text encoder")
    p.add_argument("--max-minutes", type=float, default=170.0, help="stop (with a checkpoint) after this")
    p.add_argument("--ckpt-every", type=int, default=200, help="checkpoint interval in steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the data order and noise")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--guidance-scale", type=float, default=4.0, help="guidance scale written on export")
    p.add_argument("--export", type=Path, help="only export the EMA weights of the checkpoints here")
    p.add_argument(
        "--vae-dir", type=Path, default=tiny_sd.VAE_DIR, help="the finished autoencoder (fp16, committed, so "
        "that a new checkout skips stage 1); stage 1 writes it",
    )  # fmt: skip
    return p.parse_args(argv)


def lr_at(step: int, peak: float, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def pixels(images) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> float ``(N, 1, 32, 32)`` in [-1, 1], padded with black."""
    x = torch.from_numpy(images.copy()).float().div(127.5).sub(1).unsqueeze(1)  # (N, 1, 28, 28)
    pad = (tiny_sd.IMAGE_SIZE - x.shape[-1]) // 2
    return F.pad(x, (pad,) * 4, value=-1.0)  # (N, 1, 32, 32)


def save(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


class Log:
    """An appending CSV loss log (flushed at every checkpoint)."""

    def __init__(self, path: Path, columns: list[str]):
        new = not path.exists()
        self.file = open(path, "a", newline="")
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(columns)

    def row(self, *values) -> None:
        self.writer.writerow(values)

    def flush(self) -> None:
        self.file.flush()


def tokenizer(workdir: Path) -> CLIPTokenizer:
    folder = workdir / "tokenizer"
    if not (folder / "vocab.json").exists():
        tiny_sd.write_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder)


def text_encoder(tok: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **tiny_sd.TEXT_CONFIG,
    )  # fmt: skip
    return CLIPTextModel(config)


# ----------------------------------------------------------------------------- stage 1: autoencoder
def train_vae(args, images: torch.Tensor, deadline: float) -> bool:
    """Returns True when the stage is complete: the autoencoder is in ``--vae-dir``."""
    if (args.vae_dir / "config.json").exists():
        return True
    path = args.workdir / "vae.pt"
    ckpt = load(path)
    if ckpt and ckpt.get("scaling_factor"):
        return save_vae(args, ckpt)
    vae = AutoencoderKL(**tiny_sd.VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr)
    gen = torch.Generator().manual_seed(args.seed)
    step = 0
    if ckpt:
        vae.load_state_dict(ckpt["vae"])
        opt.load_state_dict(ckpt["opt"])
        gen.set_state(ckpt["gen"])
        step = ckpt["step"]
        print(f"vae: resumed at step {step}", flush=True)
    log = Log(args.workdir / "vae_loss.csv", ["step", "mse", "kl", "lr", "seconds"])

    def checkpoint(scaling_factor=None) -> None:
        state = dict(vae=vae.state_dict(), opt=opt.state_dict(), gen=gen.get_state(), step=step)
        save({**state, "scaling_factor": scaling_factor}, path)
        log.flush()

    vae.train()
    start = time.time()
    while step < args.vae_steps:
        # Reconstruct a batch of images through a sampled latent.
        x = images[torch.randint(0, len(images), (args.batch_size,), generator=gen)]  # (B, 1, 32, 32)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(
            posterior.mean.shape, generator=gen
        )  # (B, 4, 16, 16)
        mse = F.mse_loss(vae.decode(z).sample, x)
        kl = posterior.kl().mean()
        lr = lr_at(step, args.vae_lr, args.vae_steps, args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        (mse + 1e-6 * kl).backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        log.row(step, f"{mse.item():.5f}", f"{kl.item():.1f}", f"{lr:.2e}", f"{time.time() - start:.1f}")
        if step % 50 == 0:
            print(
                f"vae step {step} mse {mse.item():.5f} kl {kl.item():.0f} {time.time() - start:.0f}s",
                flush=True,
            )
        if step % args.ckpt_every == 0:
            checkpoint()
        if time.time() > deadline:
            checkpoint()
            return False
    # The latent scale, as SD's 0.18215: one over the std of sampled latents of 2,048 images.
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(images[i : i + 256]).latent_dist.sample(gen) for i in range(0, 2048, 256)])
    checkpoint(scaling_factor=float(1 / z.std()))
    print(f"vae done: scaling factor {1 / z.std():.4f}", flush=True)
    return save_vae(args, load(path))


def save_vae(args, ckpt: dict) -> bool:
    """Write the finished autoencoder to ``--vae-dir`` as it ships (fp16 safetensors)."""
    vae = AutoencoderKL(**tiny_sd.VAE_CONFIG, scaling_factor=ckpt["scaling_factor"])
    vae.load_state_dict(ckpt["vae"])
    vae.to(torch.float16).save_pretrained(args.vae_dir, safe_serialization=True)
    # Reconstructions of the first 16 test images through the shipped weights: inputs above, outputs below.
    images = pixels(load_fashion_mnist("test")[0][:16])  # (16, 1, 32, 32)
    shipped = load_vae(args)
    with torch.no_grad():
        recon = shipped.decode(shipped.encode(images).latent_dist.mode()).sample
    path = args.vae_dir.parent / "reconstructions.png"
    save_png(path, upscale(grid(torch.cat([images, recon]), rows=2), 4))
    print(f"wrote {args.vae_dir} and {path} (MSE {F.mse_loss(recon, images).item():.5f})", flush=True)
    return True


def upscale(array, factor: int):
    """Nearest-neighbour enlargement of a uint8 ``(H, W, C)`` image, so small samples can be judged."""
    return array.repeat(factor, axis=0).repeat(factor, axis=1)


def load_vae(args) -> AutoencoderKL:
    """The finished autoencoder, in float32 (the fp16 weights every later stage and the export use)."""
    return AutoencoderKL.from_pretrained(args.vae_dir, torch_dtype=torch.float32).eval()


# ----------------------------------------------------------------------------- stage 2: latents
def encode_all(args, images: torch.Tensor) -> dict:
    path = args.workdir / "latents.pt"
    cached = load(path)
    if cached is not None:
        return cached
    vae = load_vae(args)
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), 500):
            posterior = vae.encode(images[i : i + 500]).latent_dist
            means.append(posterior.mean)
            stds.append(posterior.std)
    out = dict(mean=torch.cat(means), std=torch.cat(stds))  # (N, 4, 16, 16) each
    save(out, path)
    print(f"latents: {tuple(out['mean'].shape)}", flush=True)
    return out


# ----------------------------------------------------------------------------- stage 3: U-Net + text
def prompts_for(labels: torch.Tensor, gen: torch.Generator) -> list[str]:
    """A random template per image, "" with probability ``PROMPT_DROPOUT``."""
    picks = torch.randint(0, len(tiny_sd.TEMPLATES), (len(labels),), generator=gen).tolist()
    drop = (torch.rand(len(labels), generator=gen) < tiny_sd.PROMPT_DROPOUT).tolist()
    return [
        "" if d else tiny_sd.TEMPLATES[p].format(name=tiny_sd.CLASS_NAMES[y])
        for y, p, d in zip(labels.tolist(), picks, drop, strict=True)
    ]


def train_unet(args, latents: dict, labels: torch.Tensor, deadline: float) -> bool:
    path = args.workdir / "unet.pt"
    tok = tokenizer(args.workdir)
    unet, text = UNet2DConditionModel(**tiny_sd.UNET_CONFIG), text_encoder(tok)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr)
    ema = EMAModel(params, decay=args.ema_decay, use_ema_warmup=True, power=3 / 4)
    noise_scheduler = DDPMScheduler(**tiny_sd.SCHEDULE)
    scale = load_vae(args).config.scaling_factor
    gen = torch.Generator().manual_seed(args.seed + 1)
    step = 0
    ckpt = load(path)
    if ckpt:
        unet.load_state_dict(ckpt["unet"])
        text.load_state_dict(ckpt["text"])
        opt.load_state_dict(ckpt["opt"])
        ema.load_state_dict(ckpt["ema"])
        gen.set_state(ckpt["gen"])
        step = ckpt["step"]
        print(f"unet: resumed at step {step}", flush=True)
    if step >= args.unet_steps:
        return True
    log = Log(args.workdir / "unet_loss.csv", ["step", "loss", "lr", "seconds"])

    def checkpoint() -> None:
        state = dict(unet=unet.state_dict(), text=text.state_dict(), opt=opt.state_dict())
        save({**state, "ema": ema.state_dict(), "gen": gen.get_state(), "step": step}, path)
        log.flush()

    unet.train()
    text.train()
    start = time.time()
    n = len(labels)
    while step < args.unet_steps:
        # One latent-diffusion step: sampled latents, random timesteps, prompts, predict the noise.
        idx = torch.randint(0, n, (args.batch_size,), generator=gen)
        eps = torch.randn(latents["mean"][idx].shape, generator=gen)
        z0 = (latents["mean"][idx] + latents["std"][idx] * eps) * scale  # (B, 4, 16, 16)
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (args.batch_size,), generator=gen)
        ids = tok(prompts_for(labels[idx], gen), padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids  # fmt: skip
        cond = text(ids)[0]  # (B, 16, 64)
        pred = unet(noise_scheduler.add_noise(z0, noise, t), t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        lr = lr_at(step, args.lr, args.unet_steps, args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.step(params)
        step += 1
        log.row(step, f"{loss.item():.5f}", f"{lr:.2e}", f"{time.time() - start:.1f}")
        if step % 50 == 0:
            print(f"unet step {step} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
        if step % args.ckpt_every == 0:
            checkpoint()
        if time.time() > deadline:
            checkpoint()
            return False
    checkpoint()
    print(f"unet done at step {step}", flush=True)
    return True


# ----------------------------------------------------------------------------- export
def export(args) -> None:
    """The EMA weights as a ``StableDiffusionPipeline`` folder: U-Net and VAE in fp16 safetensors,
    the text encoder (0.4 MB) in fp32, so that a plain ``from_pretrained`` loads one dtype on every
    stack (transformers 5 keeps a text encoder's stored dtype, diffusers loads models in fp32); the
    scheduler keeps SD 1.5's ``clip_sample: false`` for a ``DDIMScheduler.from_config`` swap."""
    tok = tokenizer(args.workdir)
    unet, text = UNet2DConditionModel(**tiny_sd.UNET_CONFIG), text_encoder(tok)
    ckpt = load(args.workdir / "unet.pt")
    params = list(unet.parameters()) + list(text.parameters())
    ema = EMAModel(params, decay=args.ema_decay)
    ema.load_state_dict(ckpt["ema"])
    ema.copy_to(params)
    pipe = StableDiffusionPipeline(
        vae=load_vae(args), text_encoder=text, tokenizer=tok, unet=unet,
        scheduler=PNDMScheduler(**tiny_sd.PNDM_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.to(torch.float16).text_encoder.to(torch.float32)
    pipe.scheduler.register_to_config(clip_sample=False)
    pipe.save_pretrained(args.export, safe_serialization=True)
    prompts = dict(
        guidance_scale=args.guidance_scale,
        steps=50,
        classes=list(tiny_sd.CLASS_NAMES),
        templates=list(tiny_sd.TEMPLATES),
        canonical="a photo of a {name}",
    )
    (args.export / "prompts.json").write_text(json.dumps(prompts, indent=2))
    config = {k: os.path.relpath(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.export / "training.json").write_text(json.dumps({"unet_step": ckpt["step"], **config}, indent=2))
    print(f"exported U-Net step {ckpt['step']} to {args.export}")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.export:
        return export(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.workdir.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.max_minutes * 60
    train_images, train_labels = load_fashion_mnist("train")
    images = pixels(train_images)  # (60000, 1, 32, 32)
    if not train_vae(args, images, deadline):
        return print("time cap reached in the vae stage")
    latents = encode_all(args, images)
    if not train_unet(args, latents, torch.from_numpy(train_labels.astype("int64")), deadline):
        return print("time cap reached in the unet stage")
    print("all stages done")


if __name__ == "__main__":
    main()
