"""The real U-Net architectures of the paper's models, as data, buildable with random weights.

MACs, cache sizes and speed ratios depend only on the architecture, so these configs (copied from the
models' published ``unet/config.json``) let every measurement run without downloading weights.

Example:
    >>> unet = build("ddpm-cifar10")
    >>> round(sum(p.numel() for p in unet.parameters()) / 1e6, 1)
    35.7
"""

from __future__ import annotations

import diffusers
import torch

_SD_BLOCKS = dict(
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)

#: name -> (diffusers class name, config)
ARCHITECTURES: dict[str, tuple[str, dict]] = {
    "sd1.5": (
        "UNet2DConditionModel",
        dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8, **_SD_BLOCKS),
    ),
    "sd2.1": (
        "UNet2DConditionModel",
        dict(
            sample_size=96,
            cross_attention_dim=1024,
            attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True,
            **_SD_BLOCKS,
        ),
    ),
    "sdxl": (
        "UNet2DConditionModel",
        dict(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ),
    ),
    "svd": ("UNetSpatioTemporalConditionModel", dict(sample_size=96)),  # the class defaults are SVD's
    "ddpm-cifar10": (
        "UNet2DModel",
        dict(
            sample_size=32,
            block_out_channels=(128, 256, 256, 256),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=None,
            downsample_padding=0,
            flip_sin_to_cos=False,
            freq_shift=1,
            norm_eps=1e-6,
        ),
    ),
}


#: architecture -> latent side and frames (SVD) that a 2-core CPU benchmarks in minutes
CPU_SIZES = {"sd1.5": (32, 1), "sdxl": (32, 1), "ddpm-cifar10": (32, 1), "svd": (16, 2)}


def build(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random-weight U-Net of architecture ``name`` (see ``ARCHITECTURES``), in eval mode."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    cls, config = ARCHITECTURES[name]
    torch.manual_seed(seed)
    return getattr(diffusers, cls)(**{**config, **overrides}).eval()


def example_inputs(unet: torch.nn.Module, batch: int = 1, size: int | None = None, frames: int = 2) -> dict:
    """Random inputs for one forward of ``unet`` (or a PixArt transformer) at latent side ``size``
    (default: its sample size)."""
    cfg = unet.config
    size = size or (cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0])
    name = type(unet).__name__
    t = torch.tensor(500)
    if name == "UNet2DModel":
        return dict(sample=torch.randn(batch, cfg.in_channels, size, size), timestep=t)
    if getattr(cfg, "caption_channels", None):  # PixArt-alpha DiT (1024 px models take size conditions)
        return dict(
            hidden_states=torch.randn(batch, cfg.in_channels, size, size),
            timestep=t.expand(batch),
            encoder_hidden_states=torch.randn(batch, 120, cfg.caption_channels),
            added_cond_kwargs=dict(
                resolution=torch.full((batch, 2), 8.0 * size), aspect_ratio=torch.ones(batch, 1)
            ),
        )
    if name == "UNetSpatioTemporalConditionModel":
        return dict(
            sample=torch.randn(batch, frames, cfg.in_channels, size, size),
            timestep=t,
            encoder_hidden_states=torch.randn(batch, 1, cfg.cross_attention_dim),
            added_time_ids=torch.randn(batch, 3),
        )
    inputs = dict(
        sample=torch.randn(batch, cfg.in_channels, size, size),
        timestep=t,
        encoder_hidden_states=torch.randn(batch, 77, cfg.cross_attention_dim),
    )
    if cfg.addition_embed_type == "text_time":
        text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        inputs["added_cond_kwargs"] = dict(
            text_embeds=torch.randn(batch, text_dim), time_ids=torch.randn(batch, 6)
        )
    return inputs
