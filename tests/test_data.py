"""Bundled datasets: shapes, ranges, dtypes, deterministic stratified splits."""

from __future__ import annotations

import pytest
import torch

from ticketsolver.data import load_digits_28, load_digits_flat, load_wine_standardized
from ticketsolver.errors import ConfigError


def test_digits_28_are_28x28_images_in_the_unit_interval() -> None:
    data = load_digits_28()
    assert data.x_train.shape[1:] == (1, 28, 28) and data.input_shape == (1, 28, 28)
    assert len(data.x_train) + len(data.x_test) == 1797
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    assert data.input_domain == (0.0, 1.0) and data.num_classes == 10


def test_digits_28_is_the_bilinear_resize_of_the_flat_digits() -> None:
    flat, big = load_digits_flat(), load_digits_28()
    images = flat.x_test[:5].reshape(5, 1, 8, 8)
    resized = torch.nn.functional.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    torch.testing.assert_close(big.x_test[:5], resized.clamp(0, 1))
    assert torch.equal(flat.y_test, big.y_test)


def test_splits_are_deterministic_and_stratified() -> None:
    first, second = load_digits_flat(seed=3), load_digits_flat(seed=3)
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_test, second.y_test)
    assert not torch.equal(first.y_test, load_digits_flat(seed=4).y_test)
    share = torch.bincount(first.y_test, minlength=10).float() / torch.bincount(first.y_train).float()
    assert share.min() > 0.35 and share.max() < 0.5  # every class split about 30/70


def test_wine_is_signed_and_standardised_on_the_training_set() -> None:
    data = load_wine_standardized()
    assert data.x_train.shape[1:] == (13,) and data.x_train.dtype == torch.float32
    assert data.input_domain is None and data.num_classes == 3
    torch.testing.assert_close(data.x_train.mean(0), torch.zeros(13), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.x_train.std(0, unbiased=False), torch.ones(13), atol=1e-4, rtol=0)
    assert (data.x_test < 0).any()


def test_bad_test_fraction_is_refused() -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        load_digits_28(test_fraction=1.5)
