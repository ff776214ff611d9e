"""Resumable sweeps over caching settings: samples, FID, MACs and measured speed, one CSV row each.

Samples are addressable by seed: image k of a setting is generated from seed k alone, in shards of
``shard`` images saved as ``<out>/<setting>/samples_<first seed>.npy``. An interrupted sweep resumes
where it stopped: finished shards, feature files and CSV rows are kept, and every file is written
atomically (temporary file, then rename).

Example:
    >>> s = Setting("N5-b2", cache=DeepCacheConfig(interval=5, branch=2))
    >>> s.full_steps(), Setting("ddim-50", steps=50).full_steps()
    (20, 50)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import DeepCacheConfig
from .engine import DeepCacheEngine
from .io import atomic_path


@dataclass(frozen=True)
class Setting:
    """One point of a sweep: a step count and a DeepCache configuration (``None``: plain sampling)."""

    name: str
    steps: int = 100
    cache: DeepCacheConfig | None = None

    def full_steps(self) -> int:
        """Full steps of a run (static schedules; the adaptive one is recorded per shard instead)."""
        return self.steps if self.cache is None else len(self.cache.full_steps_for(self.steps))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array)


class Sweep:
    """Generate, featurise and score settings on one unconditional pipeline.

    Args:
        pipe: a diffusers pipeline with ``.unet`` whose call takes ``batch_size``, ``generator``,
            ``num_inference_steps`` and ``output_type="np"`` (DDPM/DDIM/LDM pipelines).
        out: the sweep folder.
        n_samples: images per setting (seeds 0 .. n_samples - 1).
        shard: images per generated batch and file.
        featurize: ``images (N, C, H, W) in [-1, 1] -> features (N, D)``, e.g. Inception features.
    """

    def __init__(self, pipe, out: Path, n_samples: int, shard: int, featurize: Callable):
        self.pipe, self.out, self.n, self.shard, self.featurize = pipe, Path(out), n_samples, shard, featurize
        self.engine = DeepCacheEngine(pipe.unet, DeepCacheConfig(), pipeline=pipe)
        pipe.set_progress_bar_config(disable=True)  # one bar per setting instead

    def folder(self, setting: Setting) -> Path:
        """The setting's folder; refuses to mix samples of different parameters under one name."""
        folder = self.out / setting.name
        folder.mkdir(parents=True, exist_ok=True)
        meta, params = folder / "setting.json", json.dumps(dataclasses.asdict(setting), sort_keys=True)
        if meta.exists() and meta.read_text() != params:
            raise ValueError(f"{folder} holds samples of other parameters: {meta.read_text()}")
        meta.write_text(params)
        return folder

    @torch.no_grad()
    def generate(self, setting: Setting, seeds: Sequence[int]) -> torch.Tensor:
        """Images for ``seeds`` under ``setting``, ``(B, C, H, W)`` in [-1, 1]; stats in ``self.engine``."""
        from .runner import unconditional

        if setting.cache is not None:
            self.engine.configure(setting.cache).enable()
        try:
            return unconditional(self.pipe, list(seeds), setting.steps)
        finally:
            self.engine.disable()

    def features(self, setting: Setting, progress: bool = True) -> np.ndarray:
        """Features of the setting's ``n_samples`` images, generating and featurising missing shards."""
        folder = self.folder(setting)
        feats = []
        starts = range(0, self.n, self.shard)
        for start in tqdm(starts, desc=setting.name, disable=not progress, leave=False):
            seeds = range(start, min(start + self.shard, self.n))
            samples, features = folder / f"samples_{start:06d}.npy", folder / f"features_{start:06d}.npy"
            if not features.exists():
                if not samples.exists():  # 8-bit, as saved images are; features see exactly these
                    images = self.generate(setting, seeds)
                    with atomic_path(folder / f"stats_{start:06d}.json") as tmp:
                        tmp.write_text(json.dumps(self._run_record(setting)))
                    _save_npy(samples, ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy())
                images = torch.from_numpy(np.load(samples)).float().div(127.5).sub(1)
                _save_npy(features, np.asarray(self.featurize(images)))
            feats.append(np.load(features))
        return np.concatenate(feats)

    def _run_record(self, setting: Setting) -> dict:
        if setting.cache is None:
            return {"full_steps": setting.steps, "pattern": "F" * setting.steps}
        return {"full_steps": self.engine.stats.full_steps, "pattern": self.engine.stats.pattern}

    def mean_full_steps(self, setting: Setting) -> float:
        """Full steps per run, averaged over the recorded shards (static schedules: from the rule)."""
        records = sorted((self.out / setting.name).glob("stats_*.json"))
        if not records:
            return float(setting.full_steps())
        return float(np.mean([json.loads(r.read_text())["full_steps"] for r in records]))

    def samples(self, setting: Setting) -> np.ndarray:
        """The setting's saved samples, uint8 ``(N, C, H, W)``."""
        folder = self.out / setting.name
        return np.concatenate(
            [np.load(folder / f"samples_{s:06d}.npy") for s in range(0, self.n, self.shard)]
        )


def write_csv(rows: list[dict], path: Path) -> None:
    """Write rows as CSV atomically (pandas)."""
    import pandas as pd

    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def read_csv(path: Path) -> list[dict]:
    """Rows of an existing CSV, or none."""
    import pandas as pd

    return pd.read_csv(path).to_dict("records") if path.exists() else []
