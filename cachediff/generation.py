"""Generation: loading a preset's pipeline, choosing its scheduler, and the tasks that turn seeds into
images (unconditional, text-to-image, img2img, inpainting, image-to-video, text-to-video).

Every task returns images in [-1, 1], ``(N, C, H, W)``, and image k depends only on ``seeds[k]``
(one generator per image), so runs of any batch size or shard give the same images.

Example:
    >>> _per_seed("a fox", [0, 1])
    ['a fox', 'a fox']
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
from pathlib import Path

import diffusers
import numpy as np
import safetensors
import torch
from PIL import Image

from .files import require_weights
from .modules import denoiser
from .pipelines import Preset


def launcher() -> tuple[int, int]:
    """This process's rank and the number of processes (torchrun and accelerate set both); joins
    their process group (gloo) where there are several."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return rank, world


def check_device(name: str) -> torch.device:
    """The torch device ``name``, or a one-line ``ValueError`` if it is not one or is not available.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device("foo")
        Traceback (most recent call last):
        ...
        ValueError: unknown device 'foo'; give cpu, cuda, cuda:N or mps
    """
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; give cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: this torch build has no CUDA device; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available here; use --device cpu")
    return device


def load_pipeline(preset: Preset, model: str | None = None, device: str = "cpu", dtype=torch.float32):
    """Load the preset's pipeline from a hub id or local folder, with a clear error if missing."""
    path = preset.model_path(model)
    require_weights(path)
    absent = _missing_folders(path)
    if absent:
        raise FileNotFoundError(
            f"{path!r} has no {', '.join(f'{k}/' for k in absent)} folder, which its model_index.json lists"
        )
    try:
        cls = getattr(diffusers, preset.pipeline)
        pipe = cls.from_pretrained(path, torch_dtype=dtype, **_absent_components(path))
    except OSError as err:
        broken = unreadable_weights(path)
        if broken:
            file, why = broken
            raise ValueError(f"{file!r} is not a readable weights file ({why}): truncated?") from None
        raise FileNotFoundError(
            f"could not load {path!r}: {err}\n"
            "Give --model a local folder with the weights (no download here)."
        ) from err
    needed = NEEDED_COMPONENTS.get(preset.pipeline, ())
    optional = (set(cls._optional_components) | {"safety_checker", "feature_extractor"}) - set(needed)
    missing = [k for k, v in pipe.components.items() if v is None and k not in optional]
    saved = _saved_class(path)
    if missing:
        raise ValueError(
            f"{path!r} is not a {preset.pipeline} folder: it has no {', '.join(missing)}"
            + (f" (it holds a {saved})" if saved else "")
        )
    if saved and ("XL" in saved) != ("XL" in preset.pipeline):  # SDXL weights for SD: U-Nets differ
        raise ValueError(f"{path!r} holds a {saved}, which a {preset.pipeline} cannot run")
    text_conditioned = "encoder_hidden_states" in inspect.signature(denoiser(pipe).forward).parameters
    if preset.task == "unconditional" and text_conditioned:
        raise ValueError(
            f"{path!r} holds a text-conditioned {saved or type(denoiser(pipe)).__name__}, which the "
            f"unconditional {preset.pipeline} cannot run; choose its model type (such as tiny-sd or sd1.5)"
        )
    pipe.set_progress_bar_config(leave=False)
    return pipe.to(device)


_SDXL_TEXT = ("tokenizer_2", "text_encoder_2")  # optional to diffusers, needed to run from a prompt

#: Components that a pipeline class calls optional but that the preset's task needs (beside these,
#: a safety checker and its feature extractor may be absent from any pipeline, as diffusers allows).
NEEDED_COMPONENTS = {
    "StableDiffusionXLPipeline": _SDXL_TEXT,
    "StableDiffusionXLImg2ImgPipeline": _SDXL_TEXT,
    "StableDiffusionXLInpaintPipeline": _SDXL_TEXT,
}


def unreadable_weights(path: str) -> tuple[str, str] | None:
    """The first ``.safetensors`` file under a local folder whose header does not read (a truncated
    or corrupt download), and why; ``None`` if all read (or ``path`` is no folder)."""
    for file in sorted(Path(path).glob("**/*.safetensors")) if Path(path).is_dir() else ():
        try:
            with safetensors.safe_open(file, "pt"):
                pass
        except (safetensors.SafetensorError, OSError) as err:
            return str(file), str(err).removeprefix("Error while deserializing header: ")
    return None


def _saved_class(path: str) -> str | None:
    """The pipeline class a local folder's ``model_index.json`` names, if any."""
    index = Path(path) / "model_index.json"
    return json.loads(index.read_text()).get("_class_name") if index.exists() else None


def set_scheduler(pipe, name: str | None, spacing: str | None = None) -> None:
    """Swap in the diffusers scheduler class ``name`` (same config), or keep the pipeline's if None;
    with ``spacing``, set its timestep spacing (``leading``, ``trailing`` or ``linspace``)."""
    if name is not None:
        pipe.scheduler = _checked_scheduler(pipe, name).from_config(pipe.scheduler.config)
    if spacing is not None:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, timestep_spacing=spacing)


def _checked_scheduler(pipe, name: str):
    """The diffusers scheduler class ``name``, if ``pipe`` can step it; else a one-line error."""
    cls = getattr(diffusers, name, None)
    if cls is None or not name.endswith("Scheduler"):
        raise ValueError(f"unknown scheduler {name!r}; give a diffusers class such as DDIMScheduler")
    passed = STEP_KWARGS.get(type(pipe).__name__, ())
    step = inspect.signature(cls.step).parameters if callable(getattr(cls, "step", None)) else {}
    needed = [
        k for k, p in list(step.items())[4:] if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    if needed:  # e.g. KarrasVeScheduler.step(model_output, sigma_hat, sigma_prev, sample_hat)
        raise ValueError(
            f"{name}.step needs {', '.join(needed)}, which diffusers pipelines do not pass; give a "
            "scheduler that steps (model_output, timestep, sample), such as DDIMScheduler"
        )
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in step.values())
    missing = [k for k in passed if k not in step and not takes_any]
    if missing:
        raise ValueError(
            f"{type(pipe).__name__} passes {', '.join(missing)} to scheduler.step, which {name}.step "
            "does not take; give a scheduler that does, such as DDIMScheduler"
        )
    return cls


def scheduler_options(scheduler, options: list[str]) -> dict:
    """``KEY=VALUE`` entries of ``scheduler``'s config, checked: the key must be one its class takes,
    the value JSON (``true``, ``0.5``, ``"text"``) or, for a key whose value is text, bare text.

    Example:
        >>> from diffusers import DDIMScheduler
        >>> scheduler_options(DDIMScheduler(), ["clip_sample=false", "timestep_spacing=trailing"])
        {'clip_sample': False, 'timestep_spacing': 'trailing'}
        >>> scheduler_options(DDIMScheduler(), ["clip_sampel=false"])
        Traceback (most recent call last):
        ...
        ValueError: DDIMScheduler has no config entry 'clip_sampel' (did you mean clip_sample?)
        >>> scheduler_options(DDIMScheduler(), ["clip_sample=yes"])
        Traceback (most recent call last):
        ...
        ValueError: clip_sample=yes: the value must be JSON, such as true, 0.5 or "text"
    """
    known = set(inspect.signature(type(scheduler).__init__).parameters) - {"self", "kwargs"}
    parsed = {}
    for option in options:
        key, _, value = option.partition("=")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"{type(scheduler).__name__} has no config entry {key!r}{hint}")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            if not isinstance(scheduler.config.get(key), str):
                raise ValueError(f'{option}: the value must be JSON, such as true, 0.5 or "text"') from None
            parsed[key] = value
    return parsed


#: Keyword arguments a pipeline passes to ``scheduler.step`` beyond the output, timestep and sample.
STEP_KWARGS = {"DDIMPipeline": ("eta", "use_clipped_model_output")}


def model_card(path: str) -> dict:
    """What a model folder says about its use in ``prompts.json`` (the tiny SD's: ``guidance_scale``,
    ``steps``, ``classes``, ``templates``), or nothing."""
    card = Path(path) / "prompts.json"
    return json.loads(card.read_text()) if card.is_file() else {}


def guidance(path: str, scale: float | None = None) -> dict:
    """The guidance input of a text task: ``scale`` if given, else the model card's
    ``guidance_scale``, else none (the pipeline's default)."""
    scale = model_card(path).get("guidance_scale") if scale is None else scale
    return {} if scale is None else dict(guidance_scale=scale)


def _missing_folders(path: str) -> list[str]:
    """Components that a local folder's ``model_index.json`` lists but whose folder is missing."""
    index = Path(path) / "model_index.json"
    if not index.exists():
        return []
    entries = json.loads(index.read_text()).items()
    listed = [k for k, v in entries if isinstance(v, list) and v and v[0] is not None]
    return [k for k in listed if not (Path(path) / k).is_dir()]


def _absent_components(path: str) -> dict:
    """Components a local folder saved as absent (``[null, null]``, e.g. no safety checker), passed as
    ``None`` so pipelines loaded under another class (Text2Video-Zero from SD weights) accept them."""
    index = Path(path) / "model_index.json"
    if not index.exists():
        return {}
    entries = json.loads(index.read_text()).items()
    return {k: None for k, v in entries if isinstance(v, list) and v and v[0] is None}


def unconditional(pipe, seeds: list[int], steps: int, **_) -> torch.Tensor:
    """Images in [-1, 1], ``(B, C, H, W)``; image k depends only on ``seeds[k]`` (one generator each)."""
    out = pipe(
        batch_size=len(seeds), generator=_generators(seeds), num_inference_steps=steps, output_type="np"
    )
    return _to_tensor(out.images)


def text2image(
    pipe, seeds: list[int], steps: int, prompt: str | list[str] = "", refiner=None, **extra
) -> torch.Tensor:
    """Text-to-image (also img2img and inpainting with ``image``/``mask_image`` in ``extra``); one
    prompt for all images or one per seed.

    With an SDXL ``refiner``, the base pipeline denoises the first 80% and the refiner the rest.
    """
    if "image" not in extra:  # img2img and inpainting take a strength; text-to-image a size
        size = image_size(pipe)
        extra = dict(height=size, width=size, **extra)
        if "use_resolution_binning" in inspect.signature(pipe.__call__).parameters:
            extra["use_resolution_binning"] = False  # PixArt: square at the native size, already a bin
    else:  # one init image (and mask) per seed: 0.24's img2img encodes image[i] for generator i
        extra.update({k: [extra[k]] * len(seeds) for k in ("image", "mask_image") if k in extra})
    call = dict(prompt=_per_seed(prompt, seeds), num_inference_steps=steps)
    if refiner is None:
        out = pipe(**call, generator=_generators(seeds), output_type="np", **extra)
    else:
        latents = pipe(**call, generator=_generators(seeds), output_type="latent", denoising_end=0.8, **extra)
        out = refiner(**call, image=latents.images, generator=_generators(seeds), denoising_start=0.8,
                      output_type="np")  # fmt: skip
    return _to_tensor(out.images)


def image2video(pipe, seeds: list[int], steps: int, image=None, frames: int = 14, **_) -> torch.Tensor:
    """Image-to-video (SVD): all frames of all videos, flattened to ``(B * F, C, H, W)``."""
    size = image_size(pipe)
    out = pipe(
        image, height=size, width=size, num_frames=frames, num_videos_per_prompt=len(seeds),
        generator=_generators(seeds), num_inference_steps=steps, output_type="np", decode_chunk_size=frames,
    )  # fmt: skip
    return _to_tensor(np.asarray(out.frames).reshape(-1, *np.asarray(out.frames).shape[-3:]))


def text2video(
    pipe, seeds: list[int], steps: int, prompt: str | list[str] = "", frames: int = 8, **_
) -> torch.Tensor:
    """Text2Video-Zero: one video per seed, frames flattened to ``(B * F, C, H, W)``.

    Its t1 > t0 count steps from the end of the run: the first frame is denoised for T - t1 - 1 steps,
    then all frames for the last t1 + 1. The paper's 47 and 44 of 50 keep their distance to the start.
    """
    t1 = max(steps - 3, 1)
    t0 = min(max(steps - 6, 0), t1 - 1)
    videos = [
        pipe(prompt=text, video_length=frames, num_inference_steps=steps, t0=t0, t1=t1,
             generator=generator, output_type="np").images
        for text, generator in zip(_per_seed(prompt, seeds), _generators(seeds), strict=True)
    ]  # fmt: skip
    return _to_tensor(np.concatenate(videos))


#: task name -> generation function ``(pipe, seeds, steps, **inputs) -> (N, C, H, W) in [-1, 1]``
TASKS = {
    "unconditional": unconditional,
    "text2image": text2image,
    "img2img": text2image,
    "inpaint": text2image,
    "video": image2video,
    "text2video": text2video,
}


def image_size(pipe) -> int:
    """The side of the images a pipeline makes natively (its denoiser's sample size in pixels)."""
    size = denoiser(pipe).config.sample_size
    return (size if isinstance(size, int) else size[0]) * pipe.vae_scale_factor


def _per_seed(prompt: str | list[str], seeds: list[int]) -> list[str]:
    """One prompt per seed."""
    prompts = [prompt] * len(seeds) if isinstance(prompt, str) else list(prompt)
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds")
    return prompts


def _generators(seeds: list[int]) -> list[torch.Generator]:
    """One generator per image, so image k depends on ``seeds[k]`` alone."""
    return [torch.Generator().manual_seed(s) for s in seeds]


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2) * 2 - 1  # (N, C, H, W)


def open_image(path: str, mode: str) -> Image.Image:
    """The image file at ``path`` in ``mode``, or a one-line error saying why it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except FileNotFoundError:
        raise FileNotFoundError(f"no image file {path!r}") from None
    except (OSError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read {path!r} as an image: {err}") from None


def default_inputs(pipe, task: str, image: str | None = None, mask: str | None = None) -> dict:
    """Inputs a task needs beyond the prompt: the init image (a file, or a synthetic gradient) and mask."""
    if task not in ("img2img", "inpaint", "video"):
        return {}
    size = image_size(pipe)
    if image:
        init = open_image(image, "RGB").resize((size, size))
    else:  # a smooth colour gradient: deterministic, no data needed
        ramp = np.linspace(0, 255, size, dtype=np.float32)
        rgb = np.stack(
            [np.add.outer(ramp, 0 * ramp), np.add.outer(0 * ramp, ramp), np.full((size, size), 128.0)], -1
        )
        init = Image.fromarray(rgb.astype(np.uint8))
    if task == "video":
        return dict(image=init)
    if task == "img2img":
        return dict(image=init, strength=0.75)
    if mask:
        mask_image = open_image(mask, "L").resize((size, size))
    else:  # the centre square is repainted
        m = np.zeros((size, size), dtype=np.uint8)
        m[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
        mask_image = Image.fromarray(m)
    return dict(image=init, mask_image=mask_image)
