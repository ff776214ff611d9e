"""Tiny random-weight models of the real architectures, and a minimal sampling loop, for tests and demos.

Each ``tiny_*`` factory returns a seeded diffusers U-Net of the real class with the real block layout
(so branch ids mean what they mean on the full-size model) but few channels, plus the extra inputs its
forward needs. ``sample`` runs a denoising loop with batched classifier-free guidance through an
object with ``.unet`` and ``.scheduler``, as a pipeline does.

Example:
    >>> unet, cond = tiny_unet("sd")
    >>> from cachediff.unets import num_branches
    >>> num_branches(unet)
    12
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import diffusers
import torch

from . import architectures

#: The tiny U-Nets: the real architectures of ``cachediff.architectures`` with few channels (the real
#: block layout, so branch ids mean what they mean on the full-size model). ddpm: the CIFAR-10 layout
#: with diffusers' default padding, time embedding and norm.
TINY = {
    "sd": ("sd1.5", dict(block_out_channels=(32, 32, 64, 64), cross_attention_dim=32)),
    "sdxl": ("sdxl", dict(
        block_out_channels=(32, 64, 64), transformer_layers_per_block=(1, 1, 2), cross_attention_dim=32,
        attention_head_dim=(2, 4, 8), addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 6 * 8,
    )),
    "svd": ("svd", dict(
        block_out_channels=(32, 32, 64, 64), cross_attention_dim=32, num_attention_heads=(2, 2, 4, 4),
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=3 * 8,
    )),
    "ddpm": ("ddpm-cifar10", dict(
        block_out_channels=(32, 32, 64, 64), attention_head_dim=8, downsample_padding=1,
        flip_sin_to_cos=True, freq_shift=0, norm_eps=1e-5,
    )),
}  # fmt: skip
KINDS = tuple(TINY)


def tiny_unet(kind: str, seed: int = 0, batch: int = 2) -> tuple[torch.nn.Module, dict]:
    """A tiny seeded U-Net of ``kind`` (see ``TINY``) and the keyword inputs for a batch of ``batch``."""
    if kind not in TINY:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    name, overrides = TINY[kind]
    norm = {} if kind == "svd" else dict(norm_num_groups=8)
    unet = architectures.build(name, seed, sample_size=8, **norm, **overrides)
    if kind == "ddpm":
        return unet, {}
    if kind == "svd":
        return unet, dict(
            encoder_hidden_states=torch.randn(batch, 1, 32),
            added_time_ids=torch.randn(batch, 3),
            concat=torch.randn(batch, 2, 4, 8, 8),  # image latents, concatenated on channels as SVD does
        )
    cond = dict(encoder_hidden_states=torch.randn(batch, 7, 32))
    if kind == "sdxl":
        cond["added_cond_kwargs"] = dict(text_embeds=torch.randn(batch, 16), time_ids=torch.randn(batch, 6))
    return unet, cond


def latent_shape(unet: torch.nn.Module, batch: int, frames: int = 2) -> tuple[int, ...]:
    """The shape of the denoised latent for a batch (video U-Nets take ``frames`` frames)."""
    c, s = unet.config.out_channels, unet.config.sample_size
    s = s if isinstance(s, int) else s[0]
    if type(unet).__name__ == "UNetSpatioTemporalConditionModel":
        return (batch, frames, c, s, s)
    return (batch, c, s, s)


@torch.no_grad()
def denoise(
    model: torch.nn.Module,
    scheduler,
    x: torch.Tensor,
    cond: dict,
    steps: int = 10,
    guidance: float | None = None,
    start: int = 0,
    call: Callable | None = None,
    concat: torch.Tensor | None = None,
) -> torch.Tensor:
    """The sampling loop of a diffusers pipeline: ``steps`` of ``scheduler`` from the latent ``x``.

    Args:
        model: the denoiser (U-Net or transformer).
        scheduler: a diffusers scheduler; ``set_timesteps(steps)`` starts the run.
        x: the initial latent ``(B, [F,] C, H, W)``.
        cond: keyword inputs of the model, already batched for CFG when ``guidance`` is set.
        guidance: classifier-free guidance scale (the model sees ``[x, x]``); ``None`` for none.
        start: skip the first ``start`` timesteps (as img2img does for strength < 1).
        call: how to call the model, ``call(model, x, t, cond) -> prediction``; default positional
            timestep, first output.
        concat: concatenated to the model input on the channel axis (SVD, inpainting).
    """
    scheduler.set_timesteps(steps)
    batch = 1 if guidance is None else 2
    call = call or (lambda m, x, t, c: m(x, t, **c, return_dict=False)[0])
    for t in scheduler.timesteps[start:]:
        inp = scheduler.scale_model_input(torch.cat([x] * batch), t)
        if concat is not None:
            inp = torch.cat([inp, concat], dim=x.ndim - 3)  # (B, [F,] C_latent + C_concat, H, W)
        eps = call(model, inp, t, cond)
        if guidance is not None:
            uncond, text = eps.chunk(2)
            eps = uncond + guidance * (text - uncond)
        x = scheduler.step(eps, t, x, return_dict=False)[0]
    return x


def denoise_example(pipe, inputs: dict, steps: int) -> torch.Tensor:
    """``denoise`` from ``architectures.example_inputs`` (their batch is the U-Net batch: 2 = one image
    with CFG), no guidance: the loop of ``scripts/bench.py`` and ``scripts/profile_helpers.py``."""
    sample, axis = inputs["sample"], inputs["sample"].ndim - 3  # channel axis of (B, [F,] C, H, W)
    c_out = pipe.unet.config.out_channels
    x, concat = sample.narrow(axis, 0, c_out), sample.narrow(axis, c_out, sample.shape[axis] - c_out)
    cond = {k: v for k, v in inputs.items() if k not in ("sample", "timestep")}
    return denoise(pipe.unet, pipe.scheduler, x, cond, steps, concat=concat if concat.numel() else None)


def sample(
    pipe,
    cond: dict,
    steps: int = 10,
    seed: int = 0,
    guidance: float | None = 3.0,
    start: int = 0,
    call: Callable | None = None,
) -> torch.Tensor:
    """``denoise`` from seeded noise through ``pipe.unet`` and ``pipe.scheduler``, as a pipeline does.

    Args:
        pipe: anything with ``.unet`` and ``.scheduler`` (a real pipeline or a ``SimpleNamespace``).
        cond: keyword inputs of the U-Net, already batched for CFG when ``guidance`` is set; a
            ``concat`` entry is concatenated to the latent on the channel axis (SVD, inpainting).
        steps, guidance, start, call: as ``denoise``.
        seed: seed of the initial noise.
    """
    gen = torch.Generator().manual_seed(seed)
    pipe.scheduler.set_timesteps(steps)  # init_noise_sigma depends on the run (Euler, Heun)
    x = torch.randn(latent_shape(pipe.unet, 1), generator=gen) * pipe.scheduler.init_noise_sigma
    cond = dict(cond)
    concat = cond.pop("concat", None)
    return denoise(pipe.unet, pipe.scheduler, x, cond, steps, guidance, start, call, concat)


def tiny_transformer(seed: int = 0, batch: int = 2) -> tuple[torch.nn.Module, dict]:
    """A tiny seeded PixArt-alpha transformer (adaLN-single DiT with cross-attention) and its inputs.

    ``PixArtTransformer2DModel`` where diffusers has it, else ``Transformer2DModel`` with the same
    configuration (diffusers 0.24). Call it as ``model(x, timestep=t, **cond)``; latents are ``(B, 4, 8, 8)``.
    """
    cls = getattr(diffusers, "PixArtTransformer2DModel", diffusers.Transformer2DModel)
    torch.manual_seed(seed)
    model = cls(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=4,
        cross_attention_dim=16,
        attention_bias=True,
        sample_size=8,
        patch_size=2,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        caption_channels=12,
    ).eval()
    cond = dict(
        encoder_hidden_states=torch.randn(batch, 5, 12, generator=torch.Generator().manual_seed(seed)),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )
    return model, cond


def tiny_pipe(kind: str, scheduler: str = "DDIMScheduler", seed: int = 0) -> tuple[SimpleNamespace, dict]:
    """A pipeline-like ``SimpleNamespace(unet, scheduler)`` with a tiny U-Net, and its CFG inputs."""
    unet, cond = tiny_unet(kind, seed=seed, batch=2)
    sched = getattr(diffusers, scheduler)(num_train_timesteps=1000)
    return SimpleNamespace(unet=unet, scheduler=sched), cond


def byte_alphabet() -> list[str]:
    """GPT-2 / CLIP byte-level BPE's 256 printable stand-ins for the bytes 0..255."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]
