"""Class score: how often generated images show the class their prompt names, by a small classifier.

The prompt-fidelity metric of the tiny Stable Diffusion trained on Fashion-MNIST, in place of the CLIP
score (no CLIP weights ship in any package). ``FashionClassifier`` is a small CNN trained on the 60k
Fashion-MNIST training images (``experiments/sd/train_classifier.py``) and shipped in
``assets/fashion-classifier``, pinned by SHA-256. For images ``(N, 1, 32, 32)`` in [-1, 1] (28 x 28
padded with black, as the tiny SD makes them) and the class index each prompt names:

- *class score*: the mean probability the classifier gives the prompted class;
- *accuracy*: the share of images whose top-1 class is the prompted one.

Example:
    >>> import torch
    >>> probs = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    >>> class_score_of(probs, torch.tensor([0, 0]))
    (0.6, 0.5)
    >>> prompt_labels(["a photo of a t-shirt", "shirt", "a bag and a coat", "a cat"])
    [0, 6, None, None]
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..datasets import FASHION_CLASSES

#: The shipped classifier and the SHA-256 of its weights file.
CLASSIFIER = Path(__file__).resolve().parents[2] / "assets" / "fashion-classifier" / "model.safetensors"
CLASSIFIER_SHA256 = "5263724ca3e3ff96e627e4ec589d055d619531fe8dd881dbfa55755a36a26862"


class FashionClassifier(nn.Module):
    """Three conv stages (32, 64, 128 channels; 32 -> 16 -> 8 -> 4) and a linear head over 10 classes."""

    def __init__(self, classes: int = 10):
        super().__init__()

        def stage(c_in: int, c_out: int, convs: int) -> list[nn.Module]:
            layers = []
            for k in range(convs):
                layers += [nn.Conv2d(c_in if k == 0 else c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out)]
                layers.append(nn.SiLU())
            return layers + [nn.MaxPool2d(2)]

        self.features = nn.Sequential(*stage(1, 32, 2), *stage(32, 64, 2), *stage(64, 128, 1))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(128 * 4 * 4, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, classes)`` of images ``(N, 1, 32, 32)`` in [-1, 1]."""
        return self.head(self.features(x))


def load_classifier(path: Path = CLASSIFIER, sha256: str | None = None, device: str = "cpu") -> nn.Module:
    """The classifier in eval mode, after checking the SHA-256 of its weights (the shipped file's by
    default)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no classifier weights at {path} (experiments/sd/train_classifier.py)")
    expected = sha256 or (CLASSIFIER_SHA256 if path == CLASSIFIER else None)
    if expected is not None:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected:
            raise RuntimeError(f"{path} has SHA-256 {digest}, expected {expected}")
    model = FashionClassifier()
    model.load_state_dict({k: v.float() for k, v in load_file(path).items()})
    return model.to(device).eval()


@torch.no_grad()
def probabilities(images: torch.Tensor, model: nn.Module, batch_size: int = 500) -> torch.Tensor:
    """Class probabilities ``(N, classes)`` of images ``(N, 1, 32, 32)`` in [-1, 1]; 28 x 28 images are
    padded with black first, 3-channel images averaged to grey."""
    if images.shape[1] == 3:
        images = images.mean(1, keepdim=True)
    if images.shape[-1] == 28:
        images = nn.functional.pad(images, (2,) * 4, value=-1.0)
    device = next(model.parameters()).device
    batches = [
        images[i : i + batch_size].to(device, torch.float32) for i in range(0, len(images), batch_size)
    ]
    return torch.cat([model(x).softmax(-1).cpu() for x in batches])


def prompted(probs: torch.Tensor, labels) -> torch.Tensor:
    """Each image's probability of its labelled class, ``(N,)``: the per-image class score.

    Example:
        >>> prompted(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), [0, 1])
        tensor([0.9000, 0.7000])
    """
    return probs.gather(1, torch.as_tensor(labels, dtype=torch.long)[:, None])[:, 0]


def class_score_of(probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(mean probability of the labelled class, top-1 accuracy) of class probabilities ``(N, C)``."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    chosen = prompted(probs, labels)
    return round(float(chosen.mean()), 6), round(float((probs.argmax(1) == labels).float().mean()), 6)


def class_score(images: torch.Tensor, labels, model: nn.Module) -> tuple[float, float]:
    """(class score, accuracy) of images against the class index each was prompted with."""
    return class_score_of(probabilities(images, model), torch.as_tensor(labels))


def prompt_labels(prompts: Sequence[str], classes: Sequence[str] = FASHION_CLASSES) -> list[int | None]:
    """The class each prompt names (a class name as a whole word, "shirt" not inside "t-shirt"), or
    ``None`` where it names none or more than one."""
    found = [
        {
            k
            for k, name in enumerate(classes)
            if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", p.lower())
        }
        for p in prompts
    ]
    return [next(iter(f)) if len(f) == 1 else None for f in found]


def labels_of_prompts(prompts: Sequence[str]) -> list[int] | None:
    """The class each prompt names, or ``None`` unless every prompt names exactly one class (the
    prompts a class score is defined for).

    Example:
        >>> labels_of_prompts(["a photo of a bag", "a coat"]), labels_of_prompts(["a bag", "a cat"])
        ([8, 4], None)
    """
    labels = prompt_labels(prompts)
    return labels if labels and None not in labels else None


def class_score_of_prompts(images: torch.Tensor, prompts: Sequence[str], model: nn.Module) -> tuple | None:
    """(class score, accuracy) of images against the class each prompt names, or ``None`` unless
    every prompt names exactly one class."""
    labels = labels_of_prompts(prompts)
    return None if labels is None else class_score(images, labels, model)
