"""The class score of the tiny Stable Diffusion: the shipped, hash-pinned Fashion-MNIST classifier's
probability of the prompted class. Sanity checks on real images, wrong labels and noise."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cachediff.datasets import load_fashion_mnist
from cachediff.metrics.class_score import (
    CLASSIFIER,
    CLASSIFIER_SHA256,
    class_score,
    class_score_of,
    load_classifier,
    prompt_labels,
)
from cachediff.prompts import load_prompts


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


@pytest.fixture(scope="module")
def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_fashion_mnist("test")
    x = torch.from_numpy(images[:2000].copy()).float().div(127.5).sub(1)[:, None]  # (2000, 1, 28, 28)
    return x, torch.from_numpy(labels[:2000].astype("int64"))


def test_real_test_images_score_near_the_recorded_test_accuracy(classifier, test_set):
    recorded = json.loads((CLASSIFIER.parent / "training.json").read_text())
    score, accuracy = class_score(*test_set, classifier)
    assert recorded["test_accuracy"] >= 0.90 and recorded["sha256"] == CLASSIFIER_SHA256  # pinned in code
    assert accuracy == pytest.approx(recorded["test_accuracy"], abs=0.02) and score > 0.8


def test_images_prompted_with_the_wrong_class_score_low(classifier, test_set):
    images, labels = test_set
    score, accuracy = class_score(images, (labels + 1) % 10, classifier)
    assert score < 0.05 and accuracy < 0.03


def test_noise_scores_near_chance(classifier):
    noise = torch.rand(500, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    score, accuracy = class_score(noise, torch.arange(500) % 10, classifier)
    assert abs(score - 0.1) < 0.03 and abs(accuracy - 0.1) < 0.05


def test_the_weights_are_pinned_by_hash(tmp_path):
    tampered = tmp_path / "model.safetensors"
    shutil.copy(CLASSIFIER, tampered)
    data = bytearray(tampered.read_bytes())
    data[-1] ^= 1
    tampered.write_bytes(bytes(data))
    expected = json.loads((CLASSIFIER.parent / "training.json").read_text())["sha256"]
    with pytest.raises(RuntimeError, match="SHA-256"):
        load_classifier(tampered, sha256=expected)


def test_score_is_the_mean_probability_of_the_labelled_class():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1]])
    assert class_score_of(probs, torch.tensor([0, 2, 1])) == (
        pytest.approx((0.7 + 0.8 + 0.4) / 3),
        pytest.approx(2 / 3),
    )


def test_each_prompt_names_its_class_as_a_whole_word():
    assert prompt_labels(load_prompts("fashion")) == list(range(10))  # the tiny SD's prompts, in label order
    assert prompt_labels(["t-shirt", "a shirt", "an ankle boot", "a photo of a trouser."]) == [0, 6, 9, 1]
    assert prompt_labels(["a bag and a coat", "a cat", "", "bags"]) == [None] * 4  # two, none, none, none
