"""Scoring a sweep's samples on disk: one row per setting, in the schema of ``cachediff.rows.COLUMNS``.

Generation and scoring are separate passes joined by files (as EDM's ``generate.py`` and ``fid.py``):
``Sweep.generate_missing`` writes samples, ``row`` scores them. Two instruments judge a setting,
side by side (docs/PLANNING.md):

- *distribution quality*: FID against reference statistics, CLIP score, class score;
- *fidelity from the same noise*, on the first ``fidelity_images`` seeds: pooled PSNR and the Inception
  feature distance to the uncached baseline the user asked for, and PSNR to the converged solution
  of the same ODE (``cachediff.reference``).

Every quality column that an image-level bootstrap can bound has ``_lo`` and ``_hi`` beside it (95%,
``cachediff.metrics.intervals``): FID over ``fid_resamples`` resamplings, the others by BCa.
Fidelity is measured on the 8-bit samples as saved, the images a user gets: two 8-bit images of
nearly equal floats still differ by a level here and there, which caps a pooled PSNR at about 60 dB.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import metrics, stepping
from .datasets import load_fashion_mnist, load_mnist
from .metrics import class_score, clip_score, fid
from .rows import COLUMNS, Setting, params
from .sweep import Sweep, unit_range

#: FID reference data sets that ship inside packages: name -> test images (N, 1, H, W) in [-1, 1]
REFERENCES = {
    "mnist": lambda: unit_range(load_mnist("test")[:, None].copy()),
    "fashion-mnist": lambda: F.pad(
        unit_range(load_fashion_mnist("test")[0][:, None].copy()), (2,) * 4, value=-1
    ),
}


def reference_stats(source: str, folder: Path, n: int = 2000, featurize: Callable | None = None):
    """FID reference statistics: an ``.npz`` of ``mu`` and ``sigma``, or those of the first ``n`` test
    images of a ``REFERENCES`` data set (Fashion-MNIST padded to 32 x 32, as the tiny SD makes them),
    computed once and cached in ``folder``."""
    if source not in REFERENCES:
        if not Path(source).is_file():
            raise FileNotFoundError(
                f"no FID reference statistics {source!r} (.npz or {', '.join(REFERENCES)})"
            )
        return fid.load_stats(Path(source))
    path = Path(folder) / f"reference_{source.replace('-', '_')}_test_{n}.npz"
    if not path.exists():
        images = REFERENCES[source]()[:n]
        features = (featurize or (lambda x: fid.inception_features(x, batch_size=50)))(images)
        fid.save_stats(path, *fid.feature_stats(features))
    return fid.load_stats(path)


def speed(sweep: Sweep, base: Setting, setting: Setting, images: int, repeats: int) -> dict:
    """Measured speedup of ``setting`` over ``base`` and its seconds per image, interleaved runs."""
    times = sweep.seconds([base, setting], images, repeats)
    return dict(
        measured_speedup=metrics.speedup(times[base.name], times[setting.name]),
        seconds_per_image=float(np.median(times[setting.name])) / images,
    )


def fidelity(images, reference, features=None, reference_features=None) -> dict:
    """Pooled PSNR (of the mean MSE) and mean per-image PSNR of ``images`` to ``reference`` (the same
    seeds, ``(N, C, H, W)`` in [-1, 1]) and, given both images' Inception features, their mean
    feature distance, each with its interval.

    Example:
        >>> import torch
        >>> a = torch.zeros(4, 1, 2, 2)
        >>> out = fidelity(a + 0.02, a)  # every image 0.02 off: 40 dB, no spread
        >>> len(out), out["psnr_mean_db_lo"] < out["psnr_mean_db_hi"], {round(v, 6) for v in out.values()}
        (6, False, {40.0})
    """
    mse = metrics.mse_per_image(images, reference)
    out = metrics.psnr_interval(mse).columns("psnr_db")
    out |= metrics.mean_interval(metrics.psnr_per_image(mse)).columns("psnr_mean_db")
    if features is not None and reference_features is not None:
        distance = metrics.feature_distance(features, reference_features)
        out |= metrics.mean_interval(distance).columns("inception_distance")
    return out


def row(
    sweep: Sweep,
    setting: Setting,
    base: Setting,
    reference=None,
    clip=None,
    prompts: Sequence[str] | None = None,
    classifier=None,
    converged=None,
    fidelity_images: int | None = None,
    fid_resamples: int = 0,
) -> dict:
    """The scores of a setting's samples on disk: parameters, full calls, MACs, fidelity on the first
    ``fidelity_images`` seeds (default: the first shard) to the baseline and, given a
    ``cachediff.reference.Converged``, to the converged solution; FID against ``reference``
    statistics (with an interval over ``fid_resamples`` resamplings, if any), CLIP score with
    ``clip``, class score and top-1 accuracy with ``classifier`` (where every prompt names one class)."""
    scheduler = sweep.pipe.scheduler
    out = dict(setting=setting.name, sampler=type(scheduler).__name__, **params(setting))
    out["spacing"] = scheduler.config.get("timestep_spacing")
    out["stepping"] = stepping.mode(scheduler)
    macs = sweep.macs_per_image(setting)
    out.update(
        samples=sweep.n,
        n_full=sweep.mean_n_full(setting),
        gmacs_per_image=macs / 1e9,
        mac_speedup=sweep.macs_per_image(base) / macs,
    )
    k = min(fidelity_images or sweep.shard, sweep.n)
    images, base_images = sweep.first(setting, k), sweep.first(base, k)
    featured = reference is not None and sweep.featurize is not None
    features = sweep.features(setting, progress=False) if featured else None
    base_features = sweep.features(base, progress=False) if featured else None
    out.update(
        fidelity_images=k, **fidelity(images, base_images, _first(features, k), _first(base_features, k))
    )
    if converged is not None:
        out["converged"] = converged.describe()
        conv = fidelity(images, converged.images(k))
        out |= {name.replace("psnr_", "psnr_conv_"): v for name, v in conv.items()}
    if featured:
        bar = lambda r: tqdm(r, desc=f"{setting.name}: FID interval", leave=False)  # noqa: E731
        out |= metrics.fid_interval(features, *reference, fid_resamples, progress=bar).columns("fid")
        if not fid_resamples:
            del out["fid_lo"], out["fid_hi"]
    if prompts is not None and (clip is not None or classifier is not None):
        seeds = range(sweep.first_seed, sweep.first_seed + sweep.n)
        texts, samples = [prompts[s % len(prompts)] for s in seeds], sweep.images(setting)
        if clip is not None:
            out["clip_score"] = clip_score.clip_score(samples, texts, clip).mean().item()
        labels = classifier and class_score.labels_of_prompts(texts)
        if labels is not None:
            probs = class_score.probabilities(samples, classifier)
            out |= metrics.mean_interval(class_score.prompted(probs, labels).double().numpy()).columns(
                "class_score"
            )
            out["class_score"], out["class_accuracy"] = class_score.class_score_of(probs, labels)
    return {c: out[c] for c in COLUMNS if c in out}


def _first(features: np.ndarray | None, k: int) -> np.ndarray | None:
    return None if features is None else features[:k]
