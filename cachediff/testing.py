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

import torch

KINDS = ("sd", "sdxl", "svd", "ddpm")


def tiny_unet(kind: str, seed: int = 0, batch: int = 2) -> tuple[torch.nn.Module, dict]:
    """A tiny seeded U-Net of ``kind`` (see ``KINDS``) and the keyword inputs for a batch of ``batch``."""
    from diffusers import UNet2DConditionModel, UNet2DModel, UNetSpatioTemporalConditionModel

    torch.manual_seed(seed)
    if kind == "sd":  # SD 1.x layout: 4 blocks, 2 resnets each, cross-attention in the first 3
        unet = UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(32, 32, 64, 64),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        cond = dict(encoder_hidden_states=torch.randn(batch, 7, 32))
    elif kind == "sdxl":  # SDXL layout: 3 blocks, text-time embedding, deeper transformers
        unet = UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(32, 64, 64),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2),
            cross_attention_dim=32,
            attention_head_dim=(2, 4, 8),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=16 + 6 * 8,
            norm_num_groups=8,
        )
        cond = dict(
            encoder_hidden_states=torch.randn(batch, 7, 32),
            added_cond_kwargs=dict(text_embeds=torch.randn(batch, 16), time_ids=torch.randn(batch, 6)),
        )
    elif kind == "svd":  # SVD layout: 4 spatio-temporal blocks; input (B, frames, C, H, W)
        unet = UNetSpatioTemporalConditionModel(
            sample_size=8,
            in_channels=8,
            out_channels=4,
            block_out_channels=(32, 32, 64, 64),
            layers_per_block=2,
            cross_attention_dim=32,
            num_attention_heads=(2, 2, 4, 4),
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=3 * 8,
        )
        cond = dict(
            encoder_hidden_states=torch.randn(batch, 1, 32),
            added_time_ids=torch.randn(batch, 3),
            concat=torch.randn(batch, 2, 4, 8, 8),  # image latents, concatenated on channels as SVD does
        )
    elif kind == "ddpm":  # DDPM CIFAR-10 layout: 4 blocks, attention at 16x16
        unet = UNet2DModel(
            sample_size=8,
            block_out_channels=(32, 32, 64, 64),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
        )
        cond = {}
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return unet.eval(), cond


def latent_shape(unet: torch.nn.Module, batch: int, frames: int = 2) -> tuple[int, ...]:
    """The shape of the denoised latent for a batch (video U-Nets take ``frames`` frames)."""
    c, s = unet.config.out_channels, unet.config.sample_size
    s = s if isinstance(s, int) else s[0]
    if type(unet).__name__ == "UNetSpatioTemporalConditionModel":
        return (batch, frames, c, s, s)
    return (batch, c, s, s)


@torch.no_grad()
def sample(
    pipe,
    cond: dict,
    steps: int = 10,
    seed: int = 0,
    guidance: float | None = 3.0,
    start: int = 0,
    call: Callable | None = None,
) -> torch.Tensor:
    """Denoise from seeded noise through ``pipe.unet`` and ``pipe.scheduler``, as a pipeline does.

    Args:
        pipe: anything with ``.unet`` and ``.scheduler`` (a real pipeline or a ``SimpleNamespace``).
        cond: keyword inputs of the U-Net, already batched for CFG when ``guidance`` is set; a
            ``concat`` entry is concatenated to the latent on the channel axis (SVD, inpainting).
        steps: ``num_inference_steps`` given to ``set_timesteps``.
        seed: seed of the initial noise.
        guidance: classifier-free guidance scale (batched cond/uncond); ``None`` for none.
        start: skip the first ``start`` timesteps (as img2img does for strength < 1).
        call: how to call the U-Net, ``call(unet, x, t, cond)``; default positional timestep.
    """
    unet, scheduler = pipe.unet, pipe.scheduler
    scheduler.set_timesteps(steps)
    batch = 1 if guidance is None else 2
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(latent_shape(unet, 1), generator=gen) * scheduler.init_noise_sigma
    call = call or (lambda u, x, t, c: u(x, t, **c, return_dict=False)[0])
    cond = dict(cond)
    concat = cond.pop("concat", None)
    for t in scheduler.timesteps[start:]:
        inp = scheduler.scale_model_input(torch.cat([x] * batch), t)
        if concat is not None:
            inp = torch.cat([inp, concat], dim=x.ndim - 3)  # (B, [F,] C_latent + C_concat, H, W)
        eps = call(unet, inp, t, cond)
        if guidance is not None:
            uncond, text = eps.chunk(2)
            eps = uncond + guidance * (text - uncond)
        x = scheduler.step(eps, t, x, return_dict=False)[0]
    return x


def tiny_pipe(kind: str, scheduler: str = "DDIMScheduler", seed: int = 0) -> tuple[SimpleNamespace, dict]:
    """A pipeline-like ``SimpleNamespace(unet, scheduler)`` with a tiny U-Net, and its CFG inputs."""
    import diffusers

    unet, cond = tiny_unet(kind, seed=seed, batch=2)
    sched = getattr(diffusers, scheduler)(num_train_timesteps=1000)
    return SimpleNamespace(unet=unet, scheduler=sched), cond
