"""CLIP score on tiny random CLIP models saved to disk and loaded through the user's code path:
transformers (every environment) and open_clip (where open_clip and a matching torchvision import)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from helpers import save_tiny_clip, save_tiny_open_clip

from cachediff.metrics.clip_score import clip_cosine, clip_score, load_clip


def _open_clip_works() -> bool:
    if importlib.util.find_spec("open_clip") is None:
        return False
    try:
        import open_clip  # noqa: F401
    except RuntimeError:  # a torchvision build that does not match torch
        return False
    return True


OPEN_CLIP = _open_clip_works()
needs_open_clip = pytest.mark.skipif(not OPEN_CLIP, reason="open_clip with a matching torchvision")


BACKENDS = ["transformers", pytest.param("open_clip", marks=needs_open_clip)]


def saved_clip(backend: str, folder):
    """Tiny random CLIP weights of ``backend`` saved in ``folder``: load_clip's arguments."""
    if backend == "transformers":
        return dict(weights=str(save_tiny_clip(folder)))
    weights, arch = save_tiny_open_clip(folder)
    return dict(weights=str(weights), arch=arch)


@pytest.fixture(scope="module", params=BACKENDS)
def clip(request, tmp_path_factory):
    return load_clip(**saved_clip(request.param, tmp_path_factory.mktemp(request.param)))


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_backend_follows_the_weights(backend, tmp_path):
    """A weights file loads with open_clip, a folder with transformers."""
    assert load_clip(**saved_clip(backend, tmp_path)).backend == backend


def test_score_is_100_times_the_clamped_cosine_of_the_embeddings(clip):
    prompts = ["a red fox", "a cat", "a tree"]
    scores = clip_score(images(3), prompts, clip, batch_size=2)
    pixels = ((images(3) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    with torch.no_grad():
        image, text = clip.embed(np.ascontiguousarray(pixels), prompts)
    image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    expected = 100 * (image * text).sum(-1).clamp_min(0)
    assert scores.shape == (3,) and torch.allclose(scores, expected, atol=1e-4)
    assert ((0 <= scores) & (scores <= 100)).all()


def test_cosine_depends_on_the_prompt_and_the_image(clip):
    a = clip_cosine(images(2), ["a red fox", "a red fox"], clip)
    b = clip_cosine(images(2), ["a red fox", "blue sky"], clip)
    c = clip_cosine(images(2, seed=1), ["a red fox", "a red fox"], clip)
    assert torch.allclose(a[0], b[0], atol=1e-6) and not torch.allclose(a[1], b[1], atol=1e-4)
    assert not torch.allclose(a, c, atol=1e-4)


def test_errors(clip, tmp_path):
    with pytest.raises(ValueError, match="one prompt per image"):
        clip_score(images(2), ["x"], clip)
    with pytest.raises(FileNotFoundError, match="no CLIP folder"):
        load_clip(str(tmp_path / "missing" / "clip" / "x"))


@needs_open_clip
def test_an_unknown_open_clip_tag_names_the_known_ones():
    with pytest.raises(FileNotFoundError, match="laion2b_s34b_b88k"):
        load_clip("no-such-tag", arch="ViT-g-14")


@pytest.mark.skipif(OPEN_CLIP, reason="open_clip works here")
def test_open_clip_weights_without_open_clip_say_what_to_install():
    with pytest.raises(ImportError, match="open_clip_torch and torchvision"):
        load_clip("laion2b_s34b_b88k")
