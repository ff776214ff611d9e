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

import contextlib
import pickle
import zipfile
from pathlib import Path

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


def build_unet(params: dict, device: str | torch.device | None = None) -> torch.nn.Module:
    """A ``UNetModel`` of ``params`` (a ``CONFIGS`` entry or a YAML's ``unet_config.params``), in
    eval mode, on ``device`` (default: torch's current default); ``device="meta"`` builds it without
    memory (for MACs)."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return unet_class()(**params).eval()


def randomised(module: torch.nn.Module, std: float) -> torch.nn.Module:
    """``module`` with every weight drawn from N(0, std^2), for tests: the original code
    zero-initialises output layers (``zero_module``), whose zeros would hide what a cut changes."""
    for p in module.parameters():
        torch.nn.init.normal_(p, std=std)
    return module


def ddim_times(steps: int, num_timesteps: int = 1000) -> list[int]:
    """The timesteps at which the CompVis ``DDIMSampler`` (and ``PLMSSampler``) of ``steps`` steps
    calls the model, in order: the times of its sampling run (``cachediff.sampling_run``).

    Example:
        >>> ddim_times(4)
        [751, 501, 251, 1]
        >>> ddim_times(1001)
        Traceback (most recent call last):
        ...
        ValueError: 1001 DDIM steps: the model has 1000 timesteps, so give 1..1000 steps
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(
            f"{steps} DDIM steps: the model has {num_timesteps} timesteps, so give 1..{num_timesteps} steps"
        )
    from ldm.modules.diffusionmodules.util import make_ddim_timesteps

    return make_ddim_timesteps("uniform", steps, num_timesteps, verbose=False)[::-1].tolist()


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


# ----------------------------------------------------------------------------- LDM-4-G (cin256-v2)
class ClassEmbedder(torch.nn.Module):
    """latent-diffusion's class embedder: the class id through an ``nn.Embedding``, as a one-token
    cross-attention context ``(B, 1, embed_dim)``; class ``n_classes - 1`` is the unconditional one.
    (The ``ldm`` of stable-diffusion-sdkit, from the SD 2 repository, replaces 10% of the labels by the
    unconditional class on every call unless told not to, ``ucg_rate``: a training-time dropout that
    the paper's sampling did not have.)"""

    def __init__(self, embed_dim: int, n_classes: int = 1000, key: str = "class"):
        super().__init__()
        self.key, self.n_classes = key, n_classes
        self.embedding = torch.nn.Embedding(n_classes, embed_dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(labels[:, None])


class VQDecoder(torch.nn.Module):
    """The decoding half of latent-diffusion's ``VQModelInterface``: each latent vector replaced by
    its nearest codebook entry (taming's ``VectorQuantizer2``), ``post_quant_conv``, the ``Decoder``."""

    def __init__(self, embed_dim: int, n_embed: int, ddconfig: dict, **_):
        super().__init__()
        from ldm.modules.diffusionmodules.model import Decoder

        self.quantize = torch.nn.Module()
        self.quantize.embedding = torch.nn.Embedding(n_embed, embed_dim)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.decoder = Decoder(**ddconfig)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        codebook = self.quantize.embedding.weight
        distance = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * flat @ codebook.T
        quantized = codebook[distance.argmin(1)].view(b, h, w, c).permute(0, 3, 1, 2)
        return self.decoder(self.post_quant_conv(quantized))


class LatentDiffusion(DiffusionModel):
    """What sampling needs of latent-diffusion's class-conditional ``LatentDiffusion`` (cin256-v2):
    the U-Net, the class embedder (``get_learned_conditioning``) and the VQ decoder
    (``decode_first_stage``), built from a YAML's ``model.params`` and loaded from its Lightning
    checkpoint by key prefix (``load_ldm``)."""

    #: Checkpoint key prefixes of the parts sampling uses.
    PARTS = ("model.diffusion_model.", "cond_stage_model.", "first_stage_model.")

    def __init__(self, params: dict):
        self.unet_params = unet_params = params["unet_config"]["params"]
        super().__init__(build_unet(unet_params), params["linear_start"], params["linear_end"])
        self.cond_stage_model = ClassEmbedder(**params["cond_stage_config"]["params"])
        self.first_stage_model = VQDecoder(**params["first_stage_config"]["params"])
        self.scale_factor = float(params.get("scale_factor", 1.0))
        self.latent = (unet_params["in_channels"], params["image_size"], params["image_size"])

    def get_learned_conditioning(self, labels: torch.Tensor) -> torch.Tensor:
        return self.cond_stage_model(labels)

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        return self.first_stage_model(z / self.scale_factor)


def load_ldm(config: str, checkpoint: str | None = None, trust: bool = False) -> LatentDiffusion:
    """A ``LatentDiffusion`` of a latent-diffusion YAML (``model.params``), with the weights of a
    checkpoint saved as ``{"state_dict": ...}`` (the released ``model.ckpt``; its encoder and loss are
    not needed). ``trust`` loads a checkpoint that holds pickled objects besides tensors (it runs
    their code): only for files of your own source. Clear errors for a missing file or weights."""
    from omegaconf import DictConfig, OmegaConf

    for path in (config, checkpoint):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path!r}")
    params = OmegaConf.select(OmegaConf.load(config), "model.params")
    if not isinstance(params, DictConfig):
        raise ValueError(f"{config!r} is not a latent-diffusion model YAML: it has no model.params section")
    model = LatentDiffusion(OmegaConf.to_container(params, resolve=True))
    if checkpoint is None:
        return model
    state = read_checkpoint(checkpoint, trust)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"{checkpoint!r} holds a {type(state).__name__}, not a state dict of weights")
    try:
        missing, _ = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes of another configuration
        raise ValueError(
            f"{checkpoint!r} does not fit {config!r}: {str(err).splitlines()[1].strip()}"
        ) from None
    needed = [k for k in missing if k.startswith(LatentDiffusion.PARTS)]
    if needed:
        raise ValueError(f"{checkpoint!r} lacks {len(needed)} weights of the model, e.g. {needed[0]!r}")
    return model.eval()


def read_checkpoint(path: str, trust: bool = False):
    """What ``torch.save`` wrote to ``path`` (tensors only unless ``trust``), or a one-line
    ``ValueError``: not a checkpoint at all (neither a ``torch.save`` archive nor a pickle), or one
    that holds pickled objects besides tensors (load with ``trust`` only if you trust its source)."""
    with open(path, "rb") as f:
        pickled = f.read(1) == b"\x80"  # the PROTO opcode that starts a legacy torch.save file
    if not (pickled or zipfile.is_zipfile(path)):
        raise ValueError(f"{path!r} is not a PyTorch checkpoint (neither a torch.save archive nor a pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        if not trust and "Unsupported global" in str(err):
            raise ValueError(
                f"{path!r} holds pickled objects besides tensors; if it is from a source you trust, load it "
                "with trust=True (--trust-checkpoint)"
            ) from None
        raise ValueError(
            f"{path!r} is not a readable PyTorch checkpoint ({str(err).splitlines()[0]})"
        ) from None
    except (EOFError, RuntimeError, IndexError, KeyError) as err:  # a damaged or truncated file
        raise ValueError(
            f"{path!r} is not a readable PyTorch checkpoint ({type(err).__name__}: {err})"
        ) from None
