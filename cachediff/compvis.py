"""The CompVis / Stability ``UNetModel`` (``ldm.modules.diffusionmodules.openaimodel``): the paper's
own model code, for LDM-4-G on ImageNet (Table 1) and Stable Diffusion in the original scripts and in
the stacks built on them. The engine cuts it like a diffusers U-Net (``cachediff.unets.SequentialSpec``:
branch b is skip b, 0 = the input convolution); this module holds the configurations as data and builds
the model from the ``ldm`` package of PyPI's ``stable-diffusion-sdkit`` (MIT code).

The configurations are the ``unet_config.params`` of the original YAML files: ``cin256-v2`` is
latent-diffusion's ``configs/latent-diffusion/cin256-v2.yaml`` (LDM-4-G: a 64 x 64 x 3 latent of a
f = 4 VQ autoencoder, the class through a ``ClassEmbedder`` into cross-attention, 1000 classes + the
unconditional one), ``sd-v1`` Stable Diffusion's ``v1-inference.yaml``.

Example:
    >>> sorted(CONFIGS)
    ['cin256-v2', 'sd-v1']
    >>> CONFIGS["cin256-v2"]["channel_mult"], LATENTS["cin256-v2"]
    ([1, 2, 3, 5], (3, 64, 64))
"""

from __future__ import annotations

import torch

#: ``unet_config.params`` of the original configurations.
CONFIGS: dict[str, dict] = {
    "cin256-v2": dict(
        image_size=64,
        in_channels=3,
        out_channels=3,
        model_channels=192,
        attention_resolutions=[8, 4, 2],
        num_res_blocks=2,
        channel_mult=[1, 2, 3, 5],
        num_heads=1,
        use_spatial_transformer=True,
        transformer_depth=1,
        context_dim=512,
    ),
    "sd-v1": dict(
        image_size=32,
        in_channels=4,
        out_channels=4,
        model_channels=320,
        attention_resolutions=[4, 2, 1],
        num_res_blocks=2,
        channel_mult=[1, 2, 4, 4],
        num_heads=8,
        use_spatial_transformer=True,
        transformer_depth=1,
        context_dim=768,
        legacy=False,
    ),
}

#: The latent (C, H, W) each configuration samples, and the conditioning (tokens, width) it reads.
LATENTS = {"cin256-v2": (3, 64, 64), "sd-v1": (4, 64, 64)}
CONTEXTS = {"cin256-v2": (1, 512), "sd-v1": (77, 768)}

#: Tiny configurations of the same families for tests: every block type of the real ones (the
#: cin256 family's 4 levels, attention below full resolution, one head; SD's 2 resnets per level and
#: attention at every level but the deepest), random weights.
TINY: dict[str, dict] = {
    "cin256-v2": CONFIGS["cin256-v2"]
    | dict(image_size=16, model_channels=32, attention_resolutions=[4, 2], context_dim=8),
    "sd-v1": CONFIGS["sd-v1"]
    | dict(image_size=8, model_channels=32, channel_mult=[1, 2, 2], attention_resolutions=[2, 1])
    | dict(num_heads=2, context_dim=8),
}
TINY_LATENTS = {"cin256-v2": (3, 16, 16), "sd-v1": (4, 8, 8)}


def unet_class():
    """``ldm``'s ``UNetModel``, or an ``ImportError`` that says how to install it."""
    try:
        from ldm.modules.diffusionmodules.openaimodel import UNetModel
    except ImportError as err:
        raise ImportError(
            f"the CompVis UNetModel needs the ldm package ({err}): "
            "pip install --no-deps stable-diffusion-sdkit==2.1.5 einops omegaconf"
        ) from None
    return UNetModel


def build_unet(params: dict, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A ``UNetModel`` of ``params`` (a ``CONFIGS`` entry or a YAML's ``unet_config.params``), in
    eval mode; ``device="meta"`` builds it without memory (for MACs)."""
    with torch.device(device):
        return unet_class()(**params).eval()


def example_inputs(name: str, batch: int = 1, tiny: bool = False, device="cpu") -> dict:
    """Keyword inputs of one call of configuration ``name``: latent, timestep, context."""
    latent = (TINY_LATENTS if tiny else LATENTS)[name]
    tokens, width = CONTEXTS[name][0], (TINY if tiny else CONFIGS)[name]["context_dim"]
    with torch.device(device):
        return dict(
            x=torch.zeros(batch, *latent),
            timesteps=torch.full((batch,), 500.0),
            context=torch.zeros(batch, tokens, width),
        )


#: The noise schedules of the configurations (``linear_start``, ``linear_end`` of their YAML files).
SCHEDULES = {"cin256-v2": (0.0015, 0.0195), "sd-v1": (0.00085, 0.012)}


class DiffusionModel(torch.nn.Module):
    """What the CompVis DDIM / PLMS samplers and k-diffusion's ``CompVisDenoiser`` read of an
    ``ldm.models.diffusion.ddpm.LatentDiffusion`` (whose module needs pytorch-lightning): the
    1000-step linear-in-sqrt noise schedule, ``apply_model(x, t, cond)`` (cond: the cross-attention
    context) and the denoiser at ``model.diffusion_model``, as the original class holds it.

    Example:
        >>> unet = build_unet(TINY["sd-v1"], device="meta")
        >>> ldm = DiffusionModel(unet, *SCHEDULES["sd-v1"])
        >>> ldm.num_timesteps, ldm.model.diffusion_model is unet, round(float(ldm.alphas_cumprod[-1]), 5)
        (1000, True, 0.00466)
    """

    parameterization = "eps"

    def __init__(self, unet: torch.nn.Module, linear_start: float, linear_end: float, steps: int = 1000):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.diffusion_model = unet
        self.num_timesteps = steps
        betas = torch.linspace(linear_start**0.5, linear_end**0.5, steps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        for name, value in dict(
            betas=betas, alphas_cumprod=alphas_cumprod, alphas_cumprod_prev=previous
        ).items():
            self.register_buffer(name, value.float(), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.model.diffusion_model(x, t, context=cond)
