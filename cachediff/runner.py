"""Baseline and DeepCache back to back on one pipeline: timings, MACs, fidelity, image grid, config.

Scripts stay thin: they parse flags and call ``compare`` and ``save``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import metrics
from .config import DeepCacheConfig
from .engine import DeepCacheEngine
from .pipelines import Preset


def load_pipeline(preset: Preset, model: str | None = None, device: str = "cpu", dtype=torch.float32):
    """Load the preset's pipeline from a hub id or local folder, with a clear error if missing."""
    import diffusers

    path = preset.model_path(model)
    if not Path(path).exists() and not _is_hub_id(path):
        raise FileNotFoundError(f"no model folder {path!r} (give a local directory or a hub id 'owner/name')")
    try:
        pipe = getattr(diffusers, preset.pipeline).from_pretrained(path, torch_dtype=dtype)
    except OSError as err:
        raise FileNotFoundError(
            f"could not load {path!r}: {err}\n"
            "Give --model a local folder with the weights (no download here)."
        ) from err
    pipe.set_progress_bar_config(leave=False)
    return pipe.to(device)


def _is_hub_id(name: str) -> bool:
    """'owner/name' with no path syntax (a leading '/', '.', '~' or a second '/')."""
    return name.count("/") == 1 and not name.startswith(("/", ".", "~"))


def unconditional(pipe, seeds: list[int], steps: int) -> torch.Tensor:
    """Images in [-1, 1], ``(B, C, H, W)``; image k depends only on ``seeds[k]`` (one generator each)."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    out = pipe(batch_size=len(seeds), generator=generators, num_inference_steps=steps, output_type="np")
    return torch.from_numpy(out.images).permute(0, 3, 1, 2) * 2 - 1  # (B, C, H, W)


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


def compare(pipe, config: DeepCacheConfig, seeds: list[int], steps: int, repeats: int = 2):
    """Run baseline and DeepCache interleaved; return (Comparison, baseline images, DeepCache images)."""
    engine = DeepCacheEngine(pipe.unet, config, pipeline=pipe)
    images = {}

    def run(name, cached):
        def fn():
            if cached:
                engine.enable()
            try:
                images[name] = unconditional(pipe, seeds, steps)
            finally:
                engine.disable()

        return fn

    times = metrics.interleaved(
        {"baseline": run("baseline", False), "deepcache": run("deepcache", True)}, repeats
    )
    unet_inputs = _unet_inputs(pipe, len(seeds))
    full, cached = metrics.step_macs(pipe.unet, unet_inputs, config.branch)
    n_full = engine.stats.full_steps
    avg = metrics.average_macs(full, cached, n_full, len(engine.stats.calls))
    result = Comparison(
        baseline_seconds=statistics.median(times["baseline"]),
        deepcache_seconds=statistics.median(times["deepcache"]),
        speedup=metrics.speedup(times["baseline"], times["deepcache"]),
        macs_full=full // len(seeds),
        macs_cached=cached // len(seeds),
        macs_average=avg / len(seeds),
        mac_speedup_bound=full / avg,
        full_steps=n_full,
        steps=len(engine.stats.calls),
        psnr_db=metrics.psnr(images["baseline"], images["deepcache"]),
        mse=metrics.mse(images["baseline"], images["deepcache"]),
    )
    return result, images["baseline"], images["deepcache"]


def _unet_inputs(pipe, batch: int) -> dict:
    unet = pipe.unet
    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    return dict(sample=torch.randn(batch, unet.config.in_channels, size, size), timestep=torch.tensor(500))


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
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def save_png(path: Path, array: np.ndarray) -> None:
    """Save a uint8 image array as PNG atomically."""
    from PIL import Image

    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(tmp)
    os.replace(tmp, path)


def as_dict(result: Comparison) -> dict:
    return asdict(result)
