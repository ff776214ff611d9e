"""Generation: the tasks that turn seeds into images (unconditional, text-to-image, img2img,
inpainting, image-to-video, text-to-video); loading a pipeline is ``cachediff.loading``'s.

Every task returns images in [-1, 1], ``(N, C, H, W)``, and image k depends only on ``seeds[k]``
(one generator per image), so runs of any batch size or shard give the same images.

Example:
    >>> _per_seed("a fox", [0, 1])
    ['a fox', 'a fox']
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from PIL import Image

from .modules import denoiser


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
