"""CLIP score, as the paper reports it: 100 x cosine(image embedding, text embedding), clamped at 0.

The paper uses open_clip's ViT-g-14 (laion2b_s34b_b88k). The same weights are published in the
transformers format as ``laion/CLIP-ViT-g-14-laion2B-s34B-b88K``, which this module loads with
``transformers.CLIPModel`` (a hub id or a local folder); open_clip itself needs a torchvision build that
matches torch, which the pinned environment here does not have.

Example:
    >>> model, processor = load_clip("/weights/clip-vit-g-14")  # doctest: +SKIP
    >>> clip_score(images, ["a red fox"] * len(images), model, processor).mean()  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch

from ..io import require_weights

DEFAULT_CLIP = "laion/CLIP-ViT-g-14-laion2B-s34B-b88K"


def load_clip(model: str = DEFAULT_CLIP, device: str = "cpu"):
    """``(CLIPModel, CLIPProcessor)`` from a local folder or a hub id, with a clear error if missing."""
    from transformers import CLIPModel, CLIPProcessor

    require_weights(model, "CLIP")
    try:
        return CLIPModel.from_pretrained(model).eval().to(device), CLIPProcessor.from_pretrained(model)
    except OSError as err:
        raise FileNotFoundError(f"could not load CLIP {model!r}: {err}") from err


def clip_score(images: torch.Tensor, prompts: list[str], model, processor, batch_size: int = 32):
    """Per-image CLIP scores ``100 * max(cosine, 0)`` for ``images`` ``(N, 3, H, W)`` in [-1, 1] and
    one prompt per image."""
    return 100 * clip_cosine(images, prompts, model, processor, batch_size).clamp_min(0)


@torch.no_grad()
def clip_cosine(images: torch.Tensor, prompts: list[str], model, processor, batch_size: int = 32):
    """Per-image cosine similarity of the CLIP image and text embeddings.

    Images are quantised to 8 bits first, as saved images are, then preprocessed as CLIP expects.
    """
    if len(images) != len(prompts):
        raise ValueError(f"one prompt per image: {len(images)} images, {len(prompts)} prompts")
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        pixels = ((batch.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        inputs = processor(
            text=prompts[start : start + batch_size],
            images=list(np.ascontiguousarray(pixels)),
            return_tensors="pt",
            padding=True,
            truncation=True,
        ).to(device)
        out = model(**inputs)
        cosine = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds, dim=-1)
        scores.append(cosine)
    return torch.cat(scores).cpu()
