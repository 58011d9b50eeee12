"""Small bundled datasets for training targets, the demo and verification on real data.

Place in the pipeline: *target side* and *verification*. Nothing is downloaded: the data are the copies
scikit-learn ships (the ``data`` extra). Splits are stratified and seeded, so every call with the same
arguments returns the same tensors on every machine.

* ``load_digits_28``: the 8x8 digits upsampled to 28x28 (bilinear), for LeNet5; inputs in [0, 1].
* ``load_digits_flat``: the same digits as 64 features in [0, 1], for MLPs.
* ``load_digits_32_rgb``: the digits upsampled to 32x32 on three equal channels, for CIFAR-shaped
  networks (ResNets); inputs in [0, 1].
* ``load_wine_standardized``: 13 signed features standardised with training-set statistics, for
  targets whose first layer sees signed inputs (the input-block construction).
* ``load_arrays``: the user's own evaluation data, ``x`` (and ``y``) from an ``.npz`` or ``.safetensors`` file.
* ``load_python_text``: a character-level text corpus for character language models: the docstrings of a
  fixed list of standard-library modules (they ship with Python; the same text for one Python version).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ticketsolver.errors import ConfigError, VerificationError

__all__ = [
    "PYTHON_TEXT_MODULES",
    "Dataset",
    "TextCorpus",
    "load_arrays",
    "load_digits_28",
    "load_digits_28_signed",
    "load_digits_32_rgb",
    "load_digits_flat",
    "load_python_text",
    "load_python_text_windows",
    "load_wine_standardized",
]

#: Standard-library modules whose docstrings make the text of :func:`load_python_text`, in this order.
#: All are pure Python, so their docstrings are the same on every build of one Python version.
PYTHON_TEXT_MODULES: tuple[str, ...] = (
    "argparse",
    "calendar",
    "csv",
    "difflib",
    "fractions",
    "heapq",
    "json",
    "pprint",
    "random",
    "shlex",
    "statistics",
    "string",
    "textwrap",
    "timeit",
)


@dataclass(frozen=True)
class Dataset:
    """A classification dataset split into train and test tensors.

    Attributes:
        x_train: float32 inputs, shape (N_train, *input_shape).
        y_train: int64 labels, shape (N_train,).
        x_test: float32 inputs, shape (N_test, *input_shape).
        y_test: int64 labels, shape (N_test,).
        input_domain: (low, high) that every input lies in, e.g. (0.0, 1.0) for images; None when
            inputs are signed/unbounded (then constructions must not assume x >= 0).
        name: short name, e.g. ``"digits28"``.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_domain: tuple[float, float] | None
    name: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample input shape."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        """Number of classes (labels are 0 .. num_classes-1)."""
        return int(max(self.y_train.max(), self.y_test.max()).item()) + 1


@dataclass(frozen=True)
class TextCorpus:
    """A character-level text corpus: the text, its vocabulary, and the text as train/validation token ids.

    Attributes:
        text: the whole text.
        vocabulary: the distinct characters of ``text``, sorted; token id ``i`` is ``vocabulary[i]``.
        train: int64 token ids of the first part of the text, shape (N_train,).
        validation: int64 token ids of the rest (the text's tail), shape (N_validation,).
        name: short name, e.g. ``"python-docstrings-3.11"``.
    """

    text: str
    vocabulary: str
    train: torch.Tensor
    validation: torch.Tensor
    name: str

    @property
    def vocab_size(self) -> int:
        """Number of distinct tokens (characters)."""
        return len(self.vocabulary)

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (int64, shape (len(text),)) of ``text``.

        Raises:
            ConfigError: ``text`` has a character outside the vocabulary (names it).
        """
        index = {character: i for i, character in enumerate(self.vocabulary)}
        unknown = sorted(set(text) - index.keys())
        if unknown:
            raise ConfigError(f"characters {''.join(unknown)!r} are not in the vocabulary of {self.name}")
        return torch.tensor([index[character] for character in text], dtype=torch.int64)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """The text that token ids stand for (the inverse of :meth:`encode`)."""
        values = ids.reshape(-1).tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return "".join(self.vocabulary[int(i)] for i in values)


def _sklearn_datasets():  # noqa: ANN202 - module object
    try:
        from sklearn import datasets, model_selection
    except ImportError as error:  # the bundled data live in scikit-learn
        raise ImportError("the bundled datasets need scikit-learn: pip install 'ticketsolver[data]'") from error
    return datasets, model_selection


def _split(
    x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    _, model_selection = _sklearn_datasets()
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return x_train, x_test, y_train, y_test


def _digits_unit(test_fraction: float, seed: int) -> tuple[torch.Tensor, ...]:
    """Digits as (N, 1, 8, 8) float32 in [0, 1], split; pixel values 0..16 are divided by 16."""
    datasets, _ = _sklearn_datasets()
    bunch = datasets.load_digits()
    images = (bunch.images.astype(np.float32) / 16.0).clip(0.0, 1.0)[:, None]
    x_train, x_test, y_train, y_test = _split(images, bunch.target.astype(np.int64), test_fraction, seed)
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in (x_train, y_train, x_test, y_test))


def _resized_digits(test_fraction: float, seed: int, *, size: int, channels: int, name: str) -> Dataset:
    """The digits in [0, 1], bilinearly resized (``align_corners=False``) to size x size, clamped to [0, 1], the
    gray image repeated on ``channels`` channels."""
    x_train, y_train, x_test, y_test = _digits_unit(test_fraction, seed)

    def resize(x: torch.Tensor) -> torch.Tensor:
        up = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return up.clamp(0.0, 1.0).expand(-1, channels, -1, -1).contiguous()

    return Dataset(resize(x_train), y_train, resize(x_test), y_test, (0.0, 1.0), name)


def load_digits_28(test_fraction: float = 0.3, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits resized to 28x28, for LeNet5.

    Bilinear interpolation (``align_corners=False``) of images scaled to [0, 1], clamped to [0, 1].

    Args:
        test_fraction: share of samples held out (stratified by class).
        seed: split seed.

    Returns:
        Dataset with x of shape (N, 1, 28, 28) float32, labels int64, ``input_domain=(0.0, 1.0)``.

    Raises:
        ImportError: scikit-learn is not installed.
        ValueError: ``test_fraction`` outside (0, 1).
    """
    return _resized_digits(test_fraction, seed, size=28, channels=1, name="digits28")


def load_digits_28_signed(test_fraction: float = 0.3, seed: int = 0) -> Dataset:
    """:func:`load_digits_28` mapped to [-1, 1] (x -> 2x - 1): the same images as signed inputs.

    Returns:
        Dataset with x of shape (N, 1, 28, 28) float32, labels int64, ``input_domain=(-1.0, 1.0)``.
    """
    unit = load_digits_28(test_fraction, seed)
    return Dataset(
        2.0 * unit.x_train - 1.0, unit.y_train, 2.0 * unit.x_test - 1.0, unit.y_test, (-1.0, 1.0), "digits28-signed"
    )


def load_digits_flat(test_fraction: float = 0.3, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits as 64 features in [0, 1], for MLPs (same split as ``load_digits_28``).

    Returns:
        Dataset with x of shape (N, 64) float32, labels int64, ``input_domain=(0.0, 1.0)``.

    Raises:
        ImportError: scikit-learn is not installed.
        ValueError: ``test_fraction`` outside (0, 1).
    """
    x_train, y_train, x_test, y_test = _digits_unit(test_fraction, seed)
    return Dataset(
        x_train.reshape(len(x_train), 64),
        y_train,
        x_test.reshape(len(x_test), 64),
        y_test,
        (0.0, 1.0),
        "digits64",
    )


def load_digits_32_rgb(test_fraction: float = 0.3, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits resized to 32x32 on three equal channels: CIFAR-shaped inputs for ResNets.

    Bilinear interpolation (``align_corners=False``) of images scaled to [0, 1], clamped to [0, 1], the
    gray image repeated as R, G and B. Same split as :func:`load_digits_28` for the same arguments.

    Args:
        test_fraction: share of samples held out (stratified by class).
        seed: split seed.

    Returns:
        Dataset with x of shape (N, 3, 32, 32) float32, labels int64, ``input_domain=(0.0, 1.0)``.

    Raises:
        ImportError: scikit-learn is not installed.
        ValueError: ``test_fraction`` outside (0, 1).

    >>> data = load_digits_32_rgb()
    >>> data.input_shape, data.input_domain, data.num_classes
    ((3, 32, 32), (0.0, 1.0), 10)
    """
    return _resized_digits(test_fraction, seed, size=32, channels=3, name="digits32-rgb")


def load_wine_standardized(test_fraction: float = 0.3, seed: int = 0) -> Dataset:
    """scikit-learn's wine data (13 features, 3 classes), standardised with training-set statistics.

    The test set is scaled with the training mean/std, as a deployed model would see it, so its
    features are signed and not bounded: ``input_domain`` is None.

    Returns:
        Dataset with x of shape (N, 13) float32, labels int64, ``input_domain=None``.

    Raises:
        ImportError: scikit-learn is not installed.
        ValueError: ``test_fraction`` outside (0, 1).
    """
    datasets, _ = _sklearn_datasets()
    bunch = datasets.load_wine()
    x_train, x_test, y_train, y_test = _split(
        bunch.data.astype(np.float64), bunch.target.astype(np.int64), test_fraction, seed
    )
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0  # a constant feature stays 0 instead of becoming NaN

    def scale(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((x - mean) / std).astype(np.float32))

    return Dataset(scale(x_train), torch.from_numpy(y_train), scale(x_test), torch.from_numpy(y_test), None, "wine")


def load_arrays(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Evaluation data from a file: inputs ``x`` (float32) and optional integer labels ``y``.

    ``.npz`` files are read without unpickling (object arrays are refused); any other suffix is read as
    ``.safetensors``. Shapes are checked against the network later, by verification.

    Raises:
        VerificationError: the file cannot be read, is neither format, or has no array named ``x``.
    """
    path = Path(path)
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:  # never unpickle
                x, y = arrays["x"], arrays["y"] if "y" in arrays else None
        else:
            from safetensors.numpy import load_file

            arrays = load_file(str(path))
            x, y = arrays["x"], arrays.get("y")
    except KeyError:
        raise VerificationError(f"{path} has no array named 'x' (inputs; 'y' holds optional labels)") from None
    except Exception as exc:  # numpy and safetensors raise several types for unreadable files
        raise VerificationError(f"cannot read {path} as .npz or .safetensors ({exc})") from None
    labels = None if y is None else torch.from_numpy(np.asarray(y)).long()
    return torch.from_numpy(np.asarray(x, dtype=np.float32)), labels


def load_python_text(validation_fraction: float = 0.1, modules: Sequence[str] = PYTHON_TEXT_MODULES) -> TextCorpus:
    """Docstrings that ship with Python, as a character-level corpus (for character language models).

    The text is, for each module in ``modules`` in order: its own docstring, then the docstrings of its
    public functions and classes defined in it (names not starting with ``_``, in sorted order; methods
    are not included), each passed through :func:`inspect.cleandoc` and joined by a blank line; the
    modules' texts are joined by a blank line too. With the default :data:`PYTHON_TEXT_MODULES` on
    Python 3.11 that is 62,505 characters of 95 distinct ASCII characters. The text is the same on every
    machine for one Python version (docstrings may change between versions; the name records it). The
    validation part is the text's tail (no shuffling: windows of the two parts never overlap).

    Args:
        validation_fraction: share of the text, from its end, held out for validation.
        modules: importable module names whose docstrings make the text.

    Returns:
        TextCorpus whose ``train`` then ``validation`` ids decode to ``text``.

    Raises:
        ConfigError: ``validation_fraction`` outside (0, 1), or Python runs with ``-OO`` (no docstrings).
        ImportError: a module in ``modules`` cannot be imported.

    >>> corpus = load_python_text()
    >>> corpus.decode(corpus.encode("def parse_args(self):"))
    'def parse_args(self):'
    >>> corpus.decode(torch.cat([corpus.train, corpus.validation])) == corpus.text
    True
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ConfigError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    if sys.flags.optimize >= 2:
        raise ConfigError("Python runs with -OO, which strips the docstrings load_python_text reads")
    texts = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        docs = [module.__doc__] if module.__doc__ else []
        for name in sorted(vars(module)):
            value = vars(module)[name]
            own = (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__ == module.__name__
            if own and not name.startswith("_") and value.__doc__:
                docs.append(value.__doc__)
        texts.append("\n\n".join(inspect.cleandoc(doc) for doc in docs))
    text = "\n\n".join(texts)
    vocabulary = "".join(sorted(set(text)))
    index = {character: i for i, character in enumerate(vocabulary)}
    ids = torch.tensor([index[character] for character in text], dtype=torch.int64)
    split = len(ids) - max(1, round(validation_fraction * len(ids)))
    name = f"python-docstrings-{sys.version_info.major}.{sys.version_info.minor}"
    return TextCorpus(text, vocabulary, ids[:split], ids[split:], name)


def load_python_text_windows(context: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation text of :func:`load_python_text` as non-overlapping windows: inputs (N, context) int64 token
    ids and next-character targets (N, context), for verifying a character model (accuracy per position)."""
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    ids = load_python_text().validation
    count = (len(ids) - 1) // context
    inputs = ids[: count * context].reshape(count, context)
    targets = ids[1 : count * context + 1].reshape(count, context)
    return inputs, targets
