"""Resumable sweeps over caching settings: samples on disk by seed, then one CSV row per setting.

Generation and scoring are separate passes joined by files (as EDM's ``generate.py`` and ``fid.py``):
``Sweep.generate_missing`` writes samples, ``cachediff.scoring.row`` scores them into a row of the one
schema of ``cachediff.rows`` (``COLUMNS``): the setting's parameters, its cost (full calls, MACs,
measured speed) and its quality (FID, PSNR to the baseline, CLIP score, class score).

Samples are addressable by seed: image k of a setting is generated from seed k alone, in shards of
``shard`` images saved as ``<out>/<setting>/samples_<first seed>.npy``. An interrupted sweep resumes
where it stopped: finished shards, feature files and CSV rows are kept, and every file is written
atomically (temporary file, then rename). A sweep folder holds the samples of one sampler
(``sampler.json``) and each setting's folder those of one setting (``setting.json``): resuming with
other parameters is an error, not a silent mix. A folder shared by sweeps of other sample counts
reads only the seeds asked for (a shard that an earlier, shorter sweep left short is made again);
one written with a larger ``shard`` is refused.

Example:
    >>> unit_range(np.array([0, 255], dtype=np.uint8))  # saved 8-bit samples as the metrics read them
    tensor([-1.,  1.])
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import metrics, stepping
from .accelerators import accelerator, call_macs
from .config import DeepCacheConfig
from .core import Session
from .files import (
    atomic_path,
    claim,
    is_temporary,
    read_json,
    release,
    remove_stale_temporaries,
    save_npy,
)
from .generation import TASKS
from .modules import denoiser
from .rows import Setting

#: Configuration fields added after sample folders were first recorded (``Sweep.folder``).
LATER_FIELDS = ("phases", "refresh")


class Sweep:
    """Generate, featurise and score settings on one pipeline; samples addressable by seed.

    Args:
        pipe: a diffusers pipeline with a ``.unet`` or ``.transformer`` (see ``cachediff.accelerators``).
        out: the sweep folder.
        n_samples: images per setting (seeds 0 .. n_samples - 1).
        shard: images per saved file (and per work unit shared between processes).
        featurize: ``images (N, C, H, W) in [-1, 1] -> features (N, D)``, e.g. Inception features.
        task: a ``cachediff.generation.TASKS`` entry.
        prompts: image k is generated from seed k and prompt ``prompts[k % len(prompts)]``.
        batch: images per pipeline call (default: ``shard``); small batches run faster on a CPU whose
            cache holds their activations. The adaptive schedule decides per call for the whole
            batch, so its samples depend on ``batch``; every other setting's do not.
        first_seed: the seeds are ``first_seed .. first_seed + n_samples - 1`` (a planner's
            calibration seeds lie far from the evaluation seeds that start at 0).
        inputs: further arguments of the task (init image, mask, frames).
    """

    def __init__(
        self,
        pipe,
        out: Path,
        n_samples: int,
        shard: int,
        featurize: Callable | None = None,
        task: str = "unconditional",
        prompts: Sequence[str] | None = None,
        batch: int | None = None,
        first_seed: int = 0,
        **inputs,
    ):
        self.pipe, self.out, self.n, self.shard, self.featurize = pipe, Path(out), n_samples, shard, featurize
        self.first_seed = first_seed
        self.batch = batch or shard
        self.task, self.prompts, self.inputs = task, prompts, inputs
        self._accelerators: dict[tuple[DeepCacheConfig, int], Session] = {}  # by configuration and steps
        self._macs: dict[int, tuple[int, int]] = {}  # branch -> MACs of a full and a cached call
        pipe.set_progress_bar_config(disable=True)  # one bar per setting instead
        self._check_sampler()
        remove_stale_temporaries(self.out)  # left by processes killed while writing

    def _check_sampler(self) -> None:
        """Record the scheduler (and, for DDIM and PLMS, its ``cachediff.stepping.mode``), the task's
        scalar inputs (guidance scale, strength) and the prompt set in ``<out>/sampler.json``; refuse
        to add samples of another one (keys that only one diffusers release knows are not compared; a
        folder recorded before prompt sets were gets its set recorded now, one recorded before
        stepping was stepped by the stride)."""
        scheduler = self.pipe.scheduler
        config = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
        config.update({k: v for k, v in self.inputs.items() if isinstance(v, (int, float, str))})
        config.update(_class_name=type(scheduler).__name__, _prompts=prompt_set(self.prompts))
        if (mode := stepping.mode(scheduler)) is not None:
            config.update(_stepping=mode)
        current = json.loads(json.dumps(config, default=str))
        self.out.mkdir(parents=True, exist_ok=True)
        meta = self.out / "sampler.json"
        if not meta.exists():
            with atomic_path(meta) as tmp:
                tmp.write_text(json.dumps(current, indent=1, sort_keys=True))
            return
        saved = json.loads(meta.read_text())
        if "_stepping" in current:
            saved.setdefault("_stepping", "stride")
        differ = sorted(k for k in saved.keys() & current.keys() if saved[k] != current[k])
        if differ:
            found = ", ".join(f"{k.lstrip('_')}: {saved[k]} there, {current[k]} here" for k in differ)
            kind = "prompt set" if differ == ["_prompts"] else "sampler"
            raise ValueError(f"{self.out} holds samples of another {kind} ({found}); give another --out")
        if "_prompts" not in saved:
            with atomic_path(meta) as tmp:
                tmp.write_text(
                    json.dumps(dict(saved, _prompts=current["_prompts"]), indent=1, sort_keys=True)
                )

    def folder(self, setting: Setting) -> Path:
        """The setting's folder; refuses to mix samples of different parameters under one name (for
        the adaptive schedule, whose decisions are taken per call for the whole batch, the batch size
        is one of them)."""
        folder = self.out / setting.name
        folder.mkdir(parents=True, exist_ok=True)
        record = dataclasses.asdict(setting)
        for field in LATER_FIELDS if setting.cache is not None else ():
            if record["cache"][field] is None:  # recorded only when set: older folders still match
                del record["cache"][field]
        if setting.cache is not None and setting.cache.adaptive:
            record["batch"] = self.batch
        meta, params = folder / "setting.json", json.dumps(record, sort_keys=True)
        if not meta.exists():
            with atomic_path(meta) as tmp:
                tmp.write_text(params)
        elif meta.read_text() != params:
            raise ValueError(f"{folder} holds samples of other parameters: {meta.read_text()}")
        return folder

    def generate(self, setting: Setting, seeds: Sequence[int]) -> torch.Tensor:
        """Images for ``seeds`` under ``setting``, ``(B, C, H, W)`` in [-1, 1]."""
        return self.run(setting, seeds)[0]

    @torch.no_grad()
    def run(self, setting: Setting, seeds: Sequence[int]) -> tuple[torch.Tensor, str]:
        """Images for ``seeds`` under ``setting`` and the run's pattern of full (F) and cached (C)
        denoiser calls."""
        seeds, extra = list(seeds), dict(self.inputs)
        if self.prompts is not None:
            extra["prompt"] = [self.prompts[s % len(self.prompts)] for s in seeds]
        cache = self.accelerator(setting)
        calls = []  # denoiser calls of an uncached run (img2img and inpainting make fewer than steps)
        if cache is None:
            undo = denoiser(self.pipe).register_forward_pre_hook(lambda *_: calls.append(1)).remove
        else:
            undo = cache.enable().disable
        try:
            images = TASKS[self.task](self.pipe, seeds, setting.steps, **extra)
        finally:
            undo()
        return images, "F" * len(calls) if cache is None else cache.stats.pattern

    def accelerator(self, setting: Setting) -> Session | None:
        """The setting's accelerator (``None`` uncached), built once per configuration and steps."""
        if setting.cache is None:
            return None
        key = (setting.cache, setting.steps)
        if key not in self._accelerators:
            self._accelerators[key] = accelerator(self.pipe, setting.cache, setting.steps)
        return self._accelerators[key]

    def starts(self, rank: int = 0, world: int = 1) -> range:
        """First seeds of the shards that process ``rank`` of ``world`` owns (every ``world``-th)."""
        return range(self.first_seed, self.first_seed + self.n, self.shard)[rank::world]

    def generate_missing(
        self,
        setting: Setting,
        rank: int = 0,
        world: int = 1,
        progress: bool = True,
        poll: float = 10.0,
        starts: Sequence[int] | None = None,
    ) -> None:
        """Generate and save the missing sample shards this process owns (all of them by default; only
        those of first seeds ``starts`` if given).
        A shard that another live sweep on the same folder has claimed (``cachediff.files.claim``) is
        left to it; once only such shards are missing, this waits for them, polling every ``poll``
        seconds, and takes over any whose process has gone."""
        folder = self.folder(setting)
        owned = self.starts(rank, world) if starts is None else starts
        pending = {s: folder / f"samples_{s:06d}.npy" for s in owned}
        pending = {s: path for s, path in pending.items() if not self._holds(path, s)}
        if progress and 0 < len(pending) < len(owned):
            tqdm.write(
                f"{setting.name}: resuming, {len(owned) - len(pending)} of {len(owned)} shards already made"
            )
        bar = tqdm(total=len(pending), desc=setting.name, disable=not progress, leave=False)
        while pending:
            for start, samples in list(pending.items()):
                if not self._holds(samples, start):
                    if not claim(samples):
                        continue  # another sweep is generating it
                    try:
                        self._save_shard(setting, start, samples)
                    finally:
                        release(samples)
                del pending[start]
                bar.update()
            if pending:
                time.sleep(poll)
        bar.close()

    def _seeds(self, start: int) -> range:
        """The seeds of the shard that starts at ``start``."""
        return range(start, min(start + self.shard, self.first_seed + self.n))

    def _holds(self, path: Path, start: int) -> bool:
        """Whether the shard file ``path`` holds this sweep's seeds from ``start``: ``False`` where it is
        missing or short (an earlier sweep of fewer samples); an error where it holds more than a
        shard (written with a larger ``shard``, so its neighbours hold other seeds)."""
        if not path.exists():
            return False
        count = len(np.load(path, mmap_mode="r"))
        if count > self.shard:
            raise ValueError(
                f"{path} holds {count} images, more than a shard of {self.shard}: its folder was written "
                f"with --shard {count}; give that --shard or another --out"
            )
        return count >= len(self._seeds(start))

    def _load(self, folder: Path, kind: str, start: int) -> np.ndarray:
        """The ``kind`` ("samples", "features") of the shard at ``start``, cut to this sweep's seeds."""
        return np.load(folder / f"{kind}_{start:06d}.npy")[: len(self._seeds(start))]

    def _save_shard(self, setting: Setting, start: int, samples: Path) -> None:
        seeds = self._seeds(start)
        images = torch.cat([self._generate_recorded(setting, chunk) for chunk in _chunks(seeds, self.batch)])
        save_npy(samples, ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy())

    def features(self, setting: Setting, progress: bool = True) -> np.ndarray:
        """Features of the setting's ``n_samples`` images, generating and featurising missing shards.

        Features see exactly the saved 8-bit samples, as they would see saved images."""
        self.generate_missing(setting, progress=progress)
        folder, feats = self.folder(setting), []
        for start in self.starts():
            path, samples = folder / f"features_{start:06d}.npy", folder / f"samples_{start:06d}.npy"
            if not path.exists() or len(np.load(path, mmap_mode="r")) != len(np.load(samples, mmap_mode="r")):
                save_npy(path, np.asarray(self.featurize(unit_range(np.load(samples)))))  # of these samples
            feats.append(self._load(folder, "features", start))
        return np.concatenate(feats)

    def _generate_recorded(self, setting: Setting, seeds: range) -> torch.Tensor:
        """Images for ``seeds``, recording the run's full steps in ``stats_<first seed>.json``."""
        images, pattern = self.run(setting, seeds)
        with atomic_path(self.folder(setting) / f"stats_{seeds[0]:06d}.json") as tmp:
            tmp.write_text(
                json.dumps({"pattern": pattern, "images": len(seeds)})  # full calls: the pattern's F
            )
        return images

    def _records(self, setting: Setting) -> list[dict]:
        paths = [p for p in sorted((self.out / setting.name).glob("stats_*.json")) if not is_temporary(p)]
        return [read_json(p) for p in paths]

    def mean_n_full(self, setting: Setting) -> float:
        """Full steps per run, averaged over the recorded runs (static schedules: from the rule)."""
        records = self._records(setting)
        if not records:
            return float(setting.n_full())
        return float(np.average([r["pattern"].count("F") for r in records], weights=_weights(records)))

    def call_macs(self, setting: Setting, branch: int | None = None) -> tuple[int, int]:
        """MACs of one full and one cached denoiser call for one image (``accelerators.call_macs``),
        the cached call cut at ``branch`` (default: the setting's), counted once per cut: the
        schedule, the act and the step count do not change them."""
        config = setting.cache or DeepCacheConfig(interval=1)
        branch = config.branch if branch is None else branch
        if branch not in self._macs:
            cut = dataclasses.replace(setting, cache=DeepCacheConfig(interval=config.interval, branch=branch))
            self._macs[branch] = call_macs(self.accelerator(cut))
        return self._macs[branch]

    def macs_per_image(self, setting: Setting) -> float:
        """Denoiser MACs of one image's run: full and cached calls as recorded (a CFG pipeline's
        second pass per call not included, the same for every setting), each cached call at its own
        cut's MACs (per-phase cuts)."""
        records = self._records(setting) or [dict(pattern=setting.pattern())]
        macs = [self._run_macs(setting, r["pattern"]) for r in records]
        return float(np.average(macs, weights=_weights(records)))

    def _run_macs(self, setting: Setting, pattern: str) -> int:
        """MACs of one recorded run: each full call at the full MACs, each cached one at its cut's (a
        run as long as its pattern: PLMS makes one step more than it is asked for)."""
        full, _ = self.call_macs(setting)
        cut = (setting.cache or DeepCacheConfig(interval=1)).cut_rule(len(pattern))
        return sum(full if c == "F" else self.call_macs(setting, cut(s))[1] for s, c in enumerate(pattern))

    def seconds(self, settings: Sequence[Setting], images: int, repeats: int) -> dict[str, list[float]]:
        """Wall times of generating ``images`` images under each setting, interleaved (A B A B ...)."""
        seeds = range(self.first_seed, self.first_seed + images)
        runs = {s.name: (lambda s=s: self.generate(s, seeds)) for s in settings}
        return metrics.interleaved(runs, repeats)

    def first(self, setting: Setting, k: int | None = None) -> torch.Tensor:
        """The setting's first ``k`` images (default: its first shard) in [-1, 1], ``(k, C, H, W)``;
        the shards that hold them are generated if missing, and no other."""
        k = min(k or self.shard, self.n)
        starts = self.starts()[: -(-k // self.shard)]
        self.generate_missing(setting, progress=len(starts) > 1, starts=starts)  # a bar on long work
        folder = self.folder(setting)
        return unit_range(np.concatenate([self._load(folder, "samples", s) for s in starts]))[:k]

    def samples(self, setting: Setting) -> np.ndarray:
        """The setting's saved samples, uint8 ``(N, C, H, W)``."""
        folder = self.out / setting.name
        return np.concatenate([self._load(folder, "samples", s) for s in self.starts()])

    def images(self, setting: Setting) -> torch.Tensor:
        """The setting's saved samples as floats in [-1, 1], ``(N, C, H, W)``."""
        return unit_range(self.samples(setting))


def prompt_set(prompts: Sequence[str] | None) -> str:
    """A short name of a prompt set that tells two sets apart: its size and a digest.

    Example:
        >>> prompt_set(["a cat", "a dog"])
        '2 prompts, sha256 d7b254927570'
        >>> prompt_set(None)
        'none'
    """
    if prompts is None:
        return "none"
    digest = hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest()[:12]
    return f"{len(prompts)} prompts, sha256 {digest}"


def _weights(records: list[dict]) -> list[int]:
    """Images per recorded run (records of older sweeps, one per shard, count alike)."""
    return [r.get("images", 1) for r in records]


def _chunks(seeds: range, size: int) -> list[range]:
    """``seeds`` in consecutive runs of at most ``size``.

    Example:
        >>> _chunks(range(3, 8), 2)
        [range(3, 5), range(5, 7), range(7, 8)]
    """
    return [seeds[i : i + size] for i in range(0, len(seeds), size)]


def unit_range(samples: np.ndarray) -> torch.Tensor:
    """uint8 samples -> float images in [-1, 1]."""
    return torch.from_numpy(samples).float() / 127.5 - 1
