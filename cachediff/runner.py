"""Baseline and DeepCache back to back on one pipeline: timings, MACs, fidelity, image grid, config.

Scripts stay thin: they parse flags and call ``compare`` and ``save``.
"""

from __future__ import annotations

import inspect
import json
import platform
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .config import DeepCacheConfig
from .engine import DeepCacheEngine
from .io import atomic_path, require_weights
from .modules import ModuleCache, denoiser, dit_rule
from .pipelines import Preset


def load_pipeline(preset: Preset, model: str | None = None, device: str = "cpu", dtype=torch.float32):
    """Load the preset's pipeline from a hub id or local folder, with a clear error if missing."""
    import diffusers

    path = preset.model_path(model)
    require_weights(path)
    try:
        cls = getattr(diffusers, preset.pipeline)
        pipe = cls.from_pretrained(path, torch_dtype=dtype, **_absent_components(path))
    except OSError as err:
        raise FileNotFoundError(
            f"could not load {path!r}: {err}\n"
            "Give --model a local folder with the weights (no download here)."
        ) from err
    pipe.set_progress_bar_config(leave=False)
    return pipe.to(device)


def set_scheduler(pipe, name: str | None) -> None:
    """Swap in the diffusers scheduler class ``name`` (same config), or keep the pipeline's if None."""
    if name is None:
        return
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not name.endswith("Scheduler"):
        raise ValueError(f"unknown scheduler {name!r}; give a diffusers class such as DDIMScheduler")
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


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


def default_inputs(pipe, task: str, image: str | None = None, mask: str | None = None) -> dict:
    """Inputs a task needs beyond the prompt: the init image (a file, or a synthetic gradient) and mask."""
    from PIL import Image

    if task not in ("img2img", "inpaint", "video"):
        return {}
    size = image_size(pipe)
    if image:
        init = Image.open(image).convert("RGB").resize((size, size))
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
        mask_image = Image.open(mask).convert("L").resize((size, size))
    else:  # the centre square is repainted
        m = np.zeros((size, size), dtype=np.uint8)
        m[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
        mask_image = Image.fromarray(m)
    return dict(image=init, mask_image=mask_image)


@dataclass
class Comparison:
    """Results of one baseline-vs-DeepCache comparison."""

    baseline_seconds: float
    deepcache_seconds: float
    speedup: float
    macs_full: int
    macs_cached: int
    macs_average: float
    mac_speedup_bound: float
    full_steps: int
    steps: int
    psnr_db: float
    mse: float


def compare(
    pipe,
    config: DeepCacheConfig,
    seeds: list[int],
    steps: int,
    repeats: int = 2,
    task="unconditional",
    **inputs,
):
    """Run baseline and DeepCache interleaved; return (Comparison, baseline images, DeepCache images).

    ``task`` names a ``TASKS`` entry; ``inputs`` are its further arguments (prompt, image, ...).
    """
    pipes = [pipe] + ([inputs["refiner"]] if inputs.get("refiner") is not None else [])
    engines = [accelerator(p, config, steps) for p in pipes]
    generate = TASKS[task]
    images = {}

    def run(name, cached):
        def fn():
            try:
                for e in engines if cached else ():
                    e.enable()
                images[name] = generate(pipe, seeds, steps, **inputs)
            finally:
                for e in engines:
                    e.disable()

        return fn

    times = metrics.interleaved(
        {"baseline": run("baseline", False), "deepcache": run("deepcache", True)}, repeats
    )
    per_unet = [(step_macs(e), e.stats) for e in engines]  # base, refiner
    calls = sum(len(stats.calls) for _, stats in per_unet)
    avg = sum(stats.average_macs(f, c) * len(stats.calls) for (f, c), stats in per_unet) / calls
    uncached = sum(f * len(stats.calls) for (f, _), stats in per_unet) / calls
    full, cached = per_unet[0][0]
    result = Comparison(
        baseline_seconds=statistics.median(times["baseline"]),
        deepcache_seconds=statistics.median(times["deepcache"]),
        speedup=metrics.speedup(times["baseline"], times["deepcache"]),
        macs_full=full,
        macs_cached=cached,
        macs_average=avg,
        mac_speedup_bound=uncached / avg,
        full_steps=sum(stats.full_steps for _, stats in per_unet),
        steps=calls,
        psnr_db=metrics.psnr(images["baseline"], images["deepcache"]),
        mse=metrics.mse(images["baseline"], images["deepcache"]),
    )
    return result, images["baseline"], images["deepcache"]


def accelerator(pipe, config: DeepCacheConfig, steps: int) -> DeepCacheEngine | ModuleCache:
    """DeepCache for the pipeline's denoiser: the engine on a U-Net; on a DiT (PixArt-alpha), the
    module cache of its middle transformer blocks, where ``config.branch`` counts the blocks at each
    end that run on every step and the static schedule for ``steps`` picks the full steps."""
    if getattr(pipe, "unet", None) is not None:
        return DeepCacheEngine(pipe.unet, config, pipeline=pipe)
    model = denoiser(pipe)
    if config.schedule == "adaptive" or config.reuse != "cache":
        raise ValueError(
            "transformer models take static schedules with reuse='cache' (adaptive needs a U-Net)"
        )
    full = frozenset(config.full_steps_for(steps))
    rule = replace(dit_rule(model, config.interval, config.branch), reuse=lambda step: step not in full)
    return ModuleCache(model, [rule], pipeline=pipe)


def step_macs(cache: DeepCacheEngine | ModuleCache) -> tuple[int, int]:
    """Full and cached MACs of one denoiser call (batch 1), counted on a ``meta`` copy (no compute),
    or on the model itself where its forward cannot run on ``meta`` (SVD's temporal mixer)."""
    from .architectures import example_inputs

    def count(model: torch.nn.Module, inputs: dict) -> tuple[int, int]:
        if isinstance(cache, DeepCacheEngine):
            return metrics.step_macs(model, inputs, cache.config.branch)
        return metrics.module_step_macs(model, inputs, cache.rules)

    model = cache.unet if isinstance(cache, DeepCacheEngine) else cache.model
    try:
        with torch.device("meta"):
            shadow = type(model).from_config(model.config)
            return count(shadow, example_inputs(shadow, batch=1))
    except RuntimeError:
        inputs = example_inputs(model, batch=1)
        device = next(model.parameters()).device
        return count(model, torch.utils._pytree.tree_map(lambda t: t.to(device), inputs))


def grid(images: torch.Tensor, rows: int) -> np.ndarray:
    """Tile ``(B, C, H, W)`` images in [-1, 1] into one uint8 ``(H', W', C)`` array, ``rows`` rows."""
    b, c, h, w = images.shape
    cols = -(-b // rows)
    canvas = torch.full((c, rows * (h + 2) + 2, cols * (w + 2) + 2), -1.0)
    for k in range(b):
        r, q = divmod(k, cols)
        canvas[:, 2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + q * (w + 2) : 2 + q * (w + 2) + w] = images[k]
    return ((canvas.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def side_by_side(left: torch.Tensor, right: torch.Tensor, rows: int, gap: int = 8) -> np.ndarray:
    """Two grids next to each other (left: baseline, right: DeepCache)."""
    a, b = grid(left, rows), grid(right, rows)
    spacer = np.full((a.shape[0], gap, a.shape[2]), 255, dtype=np.uint8)
    return np.concatenate([a, spacer, b], axis=1)


def environment() -> dict:
    """Library versions and machine facts to save next to every output."""
    import diffusers

    return dict(
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        python=platform.python_version(),
        machine=platform.machine(),
        cpu_threads=torch.get_num_threads(),
        cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    )


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (a temporary file, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))


def save_gif(path: Path, frames: torch.Tensor, fps: int = 7) -> None:
    """Save video frames ``(F, C, H, W)`` in [-1, 1] as an animated GIF atomically."""
    from PIL import Image

    arrays = ((frames.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    images = [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in arrays]
    with atomic_path(path) as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=1000 // fps, loop=0
        )


def save_png(path: Path, array: np.ndarray) -> None:
    """Save a uint8 image array as PNG atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(tmp)


def as_dict(result: Comparison) -> dict:
    return asdict(result)
