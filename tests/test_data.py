"""Bundled datasets: shapes, ranges, dtypes, deterministic stratified splits."""

from __future__ import annotations

import argparse
import inspect
import sys

import pytest
import torch

from ticketsolver.data import (
    PYTHON_TEXT_MODULES,
    load_digits_28,
    load_digits_32_rgb,
    load_digits_flat,
    load_python_text,
    load_wine_standardized,
)
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


def test_digits_32_rgb_are_three_equal_channels_in_the_unit_interval() -> None:
    data = load_digits_32_rgb()
    assert data.x_train.shape[1:] == (3, 32, 32) and data.input_shape == (3, 32, 32)
    assert len(data.x_train) + len(data.x_test) == 1797
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    assert data.input_domain == (0.0, 1.0) and data.num_classes == 10
    assert torch.equal(data.x_test[:, 0], data.x_test[:, 1]) and torch.equal(data.x_test[:, 0], data.x_test[:, 2])


def test_digits_32_rgb_is_the_bilinear_resize_with_the_digits_split() -> None:
    flat, rgb = load_digits_flat(seed=2), load_digits_32_rgb(seed=2)
    images = flat.x_test[:5].reshape(5, 1, 8, 8)
    resized = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(rgb.x_test[:5, :1], resized.clamp(0, 1))
    assert torch.equal(flat.y_test, rgb.y_test) and torch.equal(load_digits_28(seed=2).y_train, rgb.y_train)


def test_digits_32_rgb_split_is_deterministic() -> None:
    first, second = load_digits_32_rgb(seed=3), load_digits_32_rgb(seed=3)
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_test, second.y_test)
    assert not torch.equal(first.y_test, load_digits_32_rgb(seed=4).y_test)


def test_python_text_ids_decode_to_the_text() -> None:
    corpus = load_python_text()
    assert corpus.vocabulary == "".join(sorted(set(corpus.text))) and corpus.vocab_size == len(corpus.vocabulary)
    assert corpus.train.dtype == torch.int64 and corpus.validation.dtype == torch.int64
    ids = torch.cat([corpus.train, corpus.validation])
    assert int(ids.min()) >= 0 and int(ids.max()) < corpus.vocab_size
    assert corpus.decode(ids) == corpus.text and torch.equal(corpus.encode(corpus.text), ids)
    assert len(corpus.validation) == round(0.1 * len(corpus.text))  # the text's tail
    assert corpus.name == f"python-docstrings-{sys.version_info.major}.{sys.version_info.minor}"


def test_python_text_is_the_docstrings_of_the_listed_modules() -> None:
    corpus = load_python_text()
    assert PYTHON_TEXT_MODULES[0] == "argparse"
    assert corpus.text.startswith(inspect.cleandoc(argparse.__doc__ or "") + "\n\n")
    assert inspect.cleandoc(argparse.ArgumentParser.__doc__ or "") in corpus.text
    assert len(corpus.text) > 50_000 and corpus.text.isascii()


def test_python_text_is_deterministic_and_its_split_configurable() -> None:
    first, second = load_python_text(), load_python_text()
    assert first.text == second.text and torch.equal(first.train, second.train)
    assert torch.equal(first.validation, second.validation)
    quarter = load_python_text(validation_fraction=0.25)
    assert quarter.text == first.text and len(quarter.validation) == round(0.25 * len(first.text))
    small = load_python_text(modules=["textwrap"])
    assert small.text.startswith("Text wrapping and filling.") and len(small.text) < len(first.text)


def test_python_text_refuses_bad_fractions_and_unknown_characters() -> None:
    with pytest.raises(ConfigError, match="validation_fraction"):
        load_python_text(validation_fraction=0.0)
    with pytest.raises(ConfigError, match="not in the vocabulary"):
        load_python_text().encode("caf\u00e9")
