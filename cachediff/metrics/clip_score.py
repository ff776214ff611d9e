"""CLIP score, as the paper reports it: 100 x cosine(image embedding, text embedding), clamped at 0.

The paper uses open_clip's ViT-g-14 with the ``laion2b_s34b_b88k`` weights. ``load_clip`` loads them
with open_clip (an open_clip weights file, or the pretrained tag, which open_clip downloads), or the
same weights in the transformers format (``laion/CLIP-ViT-g-14-laion2B-s34B-b88K``, a folder or hub
id) with ``transformers.CLIPModel``. open_clip needs a torchvision build that matches torch (the
newest environment of this repo has one; the pinned torch 2.13.0 CPU build has none), transformers
does not. Both embed the same 8-bit images the user would save.

Example:
    >>> clip = load_clip("/weights/open_clip_pytorch_model.bin", arch="ViT-g-14")  # doctest: +SKIP
    >>> clip = load_clip("laion2b_s34b_b88k")  # open_clip downloads it  # doctest: +SKIP
    >>> clip = load_clip("/weights/CLIP-ViT-g-14-laion2B-s34B-b88K")  # transformers  # doctest: +SKIP
    >>> clip_score(images, ["a red fox"] * len(images), clip).mean()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import require_weights

DEFAULT_ARCH, DEFAULT_TAG = "ViT-g-14", "laion2b_s34b_b88k"  # the paper's CLIP (open_clip names)

#: uint8 images (N, H, W, 3) and N prompts -> image and text embeddings, each (N, D)
Embed = Callable[[np.ndarray, list], tuple]


@dataclass
class Clip:
    """A loaded CLIP model: ``embed(pixels, prompts)`` and where it came from."""

    embed: Embed
    backend: str  # "open_clip" or "transformers"
    source: str


def load_clip(weights: str = DEFAULT_TAG, arch: str = DEFAULT_ARCH, device: str = "cpu") -> Clip:
    """Load CLIP for scoring, choosing the backend from ``weights``.

    Args:
        weights: an open_clip weights *file* (or a pretrained tag of ``arch`` such as
            ``laion2b_s34b_b88k``, downloaded by open_clip); otherwise a transformers CLIP *folder* or
            hub id ``owner/name``.
        arch: the open_clip architecture of a weights file or tag (ignored for transformers).
        device: torch device.

    Raises:
        FileNotFoundError: the weights are neither a file, a folder, a tag nor a hub id.
    """
    if Path(weights).is_file() or "/" not in weights and not Path(weights).exists():
        return _load_open_clip(weights, arch, device)
    return _load_transformers(weights, device)


def _load_open_clip(weights: str, arch: str, device: str) -> Clip:
    try:
        import open_clip
    except (ImportError, RuntimeError) as err:  # RuntimeError: a torchvision that does not match torch
        raise ImportError(
            f"open_clip weights {weights!r} need open_clip_torch and torchvision: {err}"
        ) from err
    if not Path(weights).is_file() and weights not in open_clip.list_pretrained_tags_by_model(arch):
        raise FileNotFoundError(
            f"no CLIP weights {weights!r}: give an open_clip weights file, a pretrained tag of {arch} "
            f"({', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'}), or a transformers "
            "folder or hub id 'owner/name'"
        )
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=weights, device=device)
    tokenizer = open_clip.get_tokenizer(arch)
    model.eval()

    def embed(pixels: np.ndarray, prompts: list) -> tuple:
        from PIL import Image

        images = torch.stack([preprocess(Image.fromarray(p)) for p in pixels]).to(device)
        return model.encode_image(images), model.encode_text(tokenizer(prompts).to(device))

    return Clip(embed, "open_clip", f"{arch} {weights}")


def _load_transformers(weights: str, device: str) -> Clip:
    from transformers import CLIPModel, CLIPProcessor

    require_weights(weights, "CLIP")
    try:
        model, processor = (
            CLIPModel.from_pretrained(weights).eval().to(device),
            CLIPProcessor.from_pretrained(weights),
        )
    except OSError as err:
        raise FileNotFoundError(f"could not load CLIP {weights!r}: {err}") from err

    def embed(pixels: np.ndarray, prompts: list) -> tuple:
        inputs = processor(
            text=prompts, images=list(pixels), return_tensors="pt", padding=True, truncation=True
        )
        out = model(**inputs.to(device))
        return out.image_embeds, out.text_embeds

    return Clip(embed, "transformers", weights)


def clip_score(images: torch.Tensor, prompts: list[str], clip: Clip, batch_size: int = 32) -> torch.Tensor:
    """Per-image CLIP scores ``100 * max(cosine, 0)`` for ``images`` ``(N, 3, H, W)`` in [-1, 1] and
    one prompt per image."""
    return 100 * clip_cosine(images, prompts, clip, batch_size).clamp_min(0)


@torch.no_grad()
def clip_cosine(images: torch.Tensor, prompts: list[str], clip: Clip, batch_size: int = 32) -> torch.Tensor:
    """Per-image cosine similarity of the CLIP image and text embeddings.

    Images are quantised to 8 bits first, as saved images are, then preprocessed as the model expects.
    """
    if len(images) != len(prompts):
        raise ValueError(f"one prompt per image: {len(images)} images, {len(prompts)} prompts")
    scores = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        pixels = ((batch.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        image, text = clip.embed(np.ascontiguousarray(pixels), list(prompts[start : start + batch_size]))
        scores.append(torch.nn.functional.cosine_similarity(image, text, dim=-1).cpu())
    return torch.cat(scores)
