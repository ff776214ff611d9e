"""CLIP score on a tiny random CLIP saved to a folder and loaded through the user's code path."""

from __future__ import annotations

import pytest
import torch

from cachediff.metrics.clip_score import clip_cosine, clip_score, load_clip
from cachediff.testing import save_tiny_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return load_clip(str(save_tiny_clip(tmp_path_factory.mktemp("clip"))))


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_score_is_100_times_the_clamped_cosine_of_the_embeddings(clip):
    model, processor = clip
    prompts = ["a red fox", "a cat", "a tree"]
    scores = clip_score(images(3), prompts, model, processor, batch_size=2)
    pixels = ((images(3) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    inputs = processor(text=prompts, images=list(pixels), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    image = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
    text = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
    expected = 100 * (image * text).sum(-1).clamp_min(0)
    assert scores.shape == (3,) and torch.allclose(scores, expected, atol=1e-4)
    assert ((0 <= scores) & (scores <= 100)).all()


def test_cosine_depends_on_the_prompt_and_the_image(clip):
    model, processor = clip
    a = clip_cosine(images(2), ["a red fox", "a red fox"], model, processor)
    b = clip_cosine(images(2), ["a red fox", "blue sky"], model, processor)
    c = clip_cosine(images(2, seed=1), ["a red fox", "a red fox"], model, processor)
    assert a[0] == b[0] and a[1] != b[1] and not torch.equal(a, c)


def test_errors(clip, tmp_path):
    model, processor = clip
    with pytest.raises(ValueError, match="one prompt per image"):
        clip_score(images(2), ["x"], model, processor)
    with pytest.raises(FileNotFoundError, match="no CLIP folder"):
        load_clip(str(tmp_path / "missing" / "clip" / "x"))
