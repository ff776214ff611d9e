"""Model presets: name -> where the weights are, which pipeline runs them, and the paper's settings.

One table, no if-ladders: scripts look a preset up and pass it to ``cachediff.generation``.

Example:
    >>> PRESETS["tiny-sd"].steps, PRESETS["tiny-sd"].prompts, PRESETS["sd1.5"].model
    (50, 'fashion', 'runwayml/stable-diffusion-v1-5')
    >>> get_preset("sd9")
    Traceback (most recent call last):
    ...
    ValueError: unknown model type 'sd9'; choose one of: tiny-sd, ddpm-mnist, ddpm-cifar10, sd1.5, ...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: The repository root, where ``assets/`` holds the shipped weights.
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Preset:
    """Settings of one model type.

    Attributes:
        model: hub id, or a path relative to the repository root for shipped weights.
        pipeline: diffusers pipeline class name.
        task: a ``cachediff.generation.TASKS`` entry: "unconditional", "text2image", "img2img",
            "inpaint", "video" (image-to-video) or "text2video".
        steps: default number of inference steps (the paper's setting).
        interval: default cache interval N.
        branch: default U-Net branch id (paper branch = id + 1).
        scheduler: diffusers scheduler class to use instead of the pipeline's (None: keep it).
        batch: default images per run.
        shallow_blocks: DiTs: the transformer blocks at each end that run on every step.
        prompts: the default prompt set (a ``cachediff.prompts.load_prompts`` source), cycled over seeds.
        class_score: its images are Fashion-MNIST-like, so the shipped classifier scores them against
            the class each prompt names (``cachediff.metrics.class_score``).
    """

    model: str
    pipeline: str
    task: str
    steps: int
    interval: int
    branch: int
    scheduler: str | None = None
    batch: int = 1
    shallow_blocks: int = 1
    prompts: str = "builtin"
    class_score: bool = False

    @property
    def takes_prompt(self) -> bool:
        """Whether its task is conditioned on text (a prompt and a guidance scale)."""
        return self.task in ("text2image", "img2img", "inpaint", "text2video")

    def model_path(self, override: str | None = None) -> str:
        """The weights to load: ``override`` if given (a path that exists from the working directory
        first, as any command-line tool reads it; else one under the repository, else a hub id), else
        the preset's (shipped paths made absolute)."""
        if override and Path(override).exists():
            return str(Path(override).resolve())
        model = override or self.model
        shipped = ROOT / model
        return str(shipped) if shipped.exists() else model


_SD15 = "runwayml/stable-diffusion-v1-5"
_SDXL = "stabilityai/stable-diffusion-xl-base-1.0"

PRESETS: dict[str, Preset] = {
    # Trained here, shipped under assets/: a Stable Diffusion pipeline on Fashion-MNIST
    # (experiments/sd/train_tiny_sd.py; 50 PLMS steps, the paper's SD setting N = 5 at paper branch 2)
    # and an MNIST DDPM (experiments/ddpm/train_mnist.py).
    "tiny-sd": Preset(
        "assets/tiny-sd",
        "StableDiffusionPipeline",
        "text2image",
        50,
        5,
        1,
        batch=10,
        prompts="fashion",
        class_score=True,
    ),  # fmt: skip
    "ddpm-mnist": Preset("assets/ddpm-mnist", "DDIMPipeline", "unconditional", 100, 5, 2, batch=16),
    # The paper's models (weights from the hub, or a local folder, on a user's machine).
    "ddpm-cifar10": Preset(
        "google/ddpm-cifar10-32", "DDIMPipeline", "unconditional", 100, 5, 2, "DDIMScheduler", batch=16
    ),
    "sd1.5": Preset(_SD15, "StableDiffusionPipeline", "text2image", 50, 5, 1),
    "sd2.1": Preset("stabilityai/stable-diffusion-2-1", "StableDiffusionPipeline", "text2image", 50, 3, 0),
    "sd-img2img": Preset(_SD15, "StableDiffusionImg2ImgPipeline", "img2img", 50, 3, 0),
    "sd-inpaint": Preset(
        "runwayml/stable-diffusion-inpainting", "StableDiffusionInpaintPipeline", "inpaint", 50, 3, 0
    ),
    "sdxl": Preset(_SDXL, "StableDiffusionXLPipeline", "text2image", 50, 3, 0),
    "sdxl-img2img": Preset(_SDXL, "StableDiffusionXLImg2ImgPipeline", "img2img", 50, 3, 0),
    "sdxl-inpaint": Preset(
        "diffusers/stable-diffusion-xl-1.0-inpainting-0.1",
        "StableDiffusionXLInpaintPipeline",
        "inpaint",
        50,
        3,
        0,
    ),
    # Needs diffusers >= 0.25: 0.24's TextToVideoZeroPipeline passes requires_safety_checker
    # positionally into StableDiffusionPipeline's image_encoder slot and cannot be loaded.
    "t2v-zero": Preset(_SD15, "TextToVideoZeroPipeline", "text2video", 50, 3, 0),
    # Unconditional latent diffusion (the paper's LDM runs use 250 DDIM steps).
    "ldm": Preset("CompVis/ldm-celebahq-256", "LDMPipeline", "unconditional", 250, 5, 0),
    # A DiT: the middle transformer blocks are cached (cachediff.modules.dit_rule), the first and last
    # shallow_blocks run on every step; it has no skip branches.
    "pixart": Preset(
        "PixArt-alpha/PixArt-XL-2-512x512", "PixArtAlphaPipeline", "text2image", 20, 3, 0, shallow_blocks=1
    ),
    "svd": Preset(
        "stabilityai/stable-video-diffusion-img2vid-xt", "StableVideoDiffusionPipeline", "video", 25, 3, 0
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``, or a ``ValueError`` listing the known ones."""
    if name not in PRESETS:
        names = list(PRESETS)
        listed = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise ValueError(f"unknown model type {name!r}; choose one of: {listed}")
    return PRESETS[name]
