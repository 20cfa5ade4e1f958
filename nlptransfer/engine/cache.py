"""A persistent feature cache for frozen bodies: one memory-mapped entry per split.

An entry is a folder ``<root>/<digest>/`` holding ``features.npy`` (float32) and
``meta.json``. The digest hashes everything that changes the features (see
:class:`CacheKey`), so a hit is always safe to use and a change is always a miss.

Writers build an entry in a temporary folder inside the root and rename it into
place: a reader sees a complete entry or none, and a killed writer leaves only a
temporary folder that readers never open (it is removed once stale).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nlptransfer.errors import ConfigError
from nlptransfer.files import CACHE_ENV, TMP_PREFIX, staging_folder
from nlptransfer.version import __version__

logger = logging.getLogger(__name__)

# Bump when the entry layout or the meaning of a key part changes: old entries become misses.
CACHE_FORMAT = 1
FEATURES_FILE = "features.npy"
META_FILE = "meta.json"
# A writer holds its temporary folder only while writing one file; older ones are leftovers.
STALE_SECONDS = 3600.0


def weights_fingerprint(module: nn.Module) -> str:
    """A hash of every parameter and buffer of ``module``: names, dtypes, shapes and bytes."""
    tensors = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    return tensors_fingerprint(tensors)


def tensors_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """A hash of named tensors: names, dtypes, shapes and bytes."""
    digest = hashlib.blake2b(digest_size=20)
    for name in sorted(tensors):  # sorted: independent of registration order
        tensor = tensors[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)};".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.to("cpu").contiguous().reshape(-1)
    # A byte view reads every dtype (bfloat16 too, which numpy lacks) without converting it.
    return flat.view(torch.uint8).numpy().data


def examples_fingerprint(encodings: Sequence[Mapping[str, Any]]) -> str:
    """A hash of encoded examples: token ids capture tokenizer, max_length and texts; resized
    pixels capture the images and the processor."""
    if encodings and any(isinstance(v, np.ndarray) for v in encodings[0].values()):
        return _arrays_fingerprint(encodings)
    text = json.dumps(list(encodings), sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


def _arrays_fingerprint(encodings: Sequence[Mapping[str, Any]]) -> str:
    # Bytes, not JSON: listing every pixel as text would take longer than the features.
    digest = hashlib.blake2b(digest_size=20)
    for encoding in encodings:
        for key in sorted(encoding):
            value = np.ascontiguousarray(encoding[key])
            digest.update(f"{key}|{value.dtype}|{value.shape};".encode())
            digest.update(value.data)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray | torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot fingerprint a {type(value).__name__} in tokenised examples")


@dataclass(frozen=True)
class CacheKey:
    """Everything that changes one split's features, in readable form (written to meta.json)."""

    parts: Mapping[str, Any]

    @property
    def digest(self) -> str:
        text = json.dumps({"format": CACHE_FORMAT, **self.parts}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


class FeatureCache:
    """Feature arrays on disk, keyed by :class:`CacheKey`, read back memory-mapped."""

    def __init__(self, root: str | os.PathLike[str], off_flag: str = "--no-feature_cache") -> None:
        """``off_flag``: the option that turns off what this cache serves, named in errors."""
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"The cache folder '{self.root}' cannot be created ({err}). Pass --cache_dir "
                f"with a writable folder, set {CACHE_ENV}, or turn the cache off with {off_flag}."
            ) from err
        self.remove_stale_temporaries()

    def path(self, key: CacheKey) -> Path:
        return self.root / key.digest

    def load(self, key: CacheKey, rows: int | None = None) -> np.ndarray | None:
        """The entry's features, memory-mapped read-only; None on a miss or a damaged entry."""
        entry = self.path(key)
        if not entry.exists():
            return None
        try:
            return _read_entry(entry, rows)
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.warning(
                "Feature cache entry %s is damaged (%s); computing the features again.", entry, err
            )
            return None

    def load_with(
        self, key: CacheKey, names: Sequence[str], rows: int | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
        """The entry's features and the named arrays stored beside them (``store``'s ``extra``),
        memory-mapped read-only; None on a miss or a damaged entry."""
        entry = self.path(key)
        if not entry.exists():
            return None
        try:
            return _read_entry(entry, rows), {name: _read_extra(entry, name) for name in names}
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.warning("Cache entry %s is damaged (%s); computing it again.", entry, err)
            return None

    def store(self, key: CacheKey, values: np.ndarray, extra: Mapping[str, np.ndarray] | None = None) -> Path:
        """Write an entry atomically (with ``extra`` arrays beside the features, e.g. row offsets);
        a valid entry already there (another process's) is kept."""
        final = self.path(key)
        if _is_valid(final, len(values)):
            return final
        with staging_folder(self.root, f"{TMP_PREFIX}{key.digest}-") as staging:
            _write_entry(staging, key, values, extra or {})
            self._publish(staging, final, len(values))
        return final

    def _publish(self, staging: Path, final: Path, rows: int) -> None:
        if final.exists() and not _is_valid(final, rows):
            self._discard(final)
        try:
            os.rename(staging, final)
        except OSError:
            if not _is_valid(final, rows):
                raise
            # Another process published the same entry first; theirs holds the same features.
            logger.debug("feature cache entry %s was written by another process; keeping it", final)

    def _discard(self, entry: Path) -> None:
        """Move a damaged entry out of the way first, so no reader ever sees it half removed."""
        trash = self.root / f"{TMP_PREFIX}discard-{entry.name}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.replace(entry, trash)
        except FileNotFoundError:  # another process discarded it already
            return
        if trash.is_dir():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink(missing_ok=True)

    def remove_stale_temporaries(self, older_than: float = STALE_SECONDS) -> None:
        """Delete temporary folders left by killed writers (young ones may still be in use)."""
        now = time.time()
        for path in self.root.glob(f"{TMP_PREFIX}*"):
            try:
                if now - path.stat().st_mtime > older_than:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:  # removed meanwhile by another process
                continue


def _read_entry(entry: Path, rows: int | None) -> np.ndarray:
    meta = json.loads((entry / META_FILE).read_text())
    values = np.load(entry / FEATURES_FILE, mmap_mode="r", allow_pickle=False)
    if meta["digest"] != entry.name:
        raise ValueError(f"meta.json belongs to entry {meta['digest']}")
    if list(values.shape) != meta["shape"] or values.dtype != np.float32:
        raise ValueError(
            f"features.npy is {values.dtype}{list(values.shape)}, meta.json says {meta['shape']}"
        )
    if rows is not None and values.shape[0] != rows:
        raise ValueError(f"{values.shape[0]} rows for {rows} examples")
    return values


def _read_extra(entry: Path, name: str) -> np.ndarray:
    meta = json.loads((entry / META_FILE).read_text())
    values = np.load(entry / f"{name}.npy", mmap_mode="r", allow_pickle=False)
    if list(values.shape) != meta["extra"][name]:
        raise ValueError(f"{name}.npy is {list(values.shape)}, meta.json says {meta['extra'][name]}")
    return values


def _is_valid(entry: Path, rows: int) -> bool:
    try:
        _read_entry(entry, rows)
        for name in json.loads((entry / META_FILE).read_text()).get("extra", {}):
            _read_extra(entry, name)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _write_entry(folder: Path, key: CacheKey, values: np.ndarray, extra: Mapping[str, np.ndarray]) -> None:
    values = np.ascontiguousarray(values, dtype=np.float32)
    meta = {
        "digest": key.digest,
        "format": CACHE_FORMAT,
        "shape": list(values.shape),
        "dtype": "float32",
        "extra": {name: list(array.shape) for name, array in extra.items()},
        "key": key.parts,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "nlptransfer_version": __version__,
    }
    for name, array in {FEATURES_FILE.removesuffix(".npy"): values, **extra}.items():
        with open(folder / f"{name}.npy", "wb") as file:
            np.save(file, np.ascontiguousarray(array))
            _sync(file)
    with open(folder / META_FILE, "w") as file:
        json.dump(meta, file, indent=2, default=str)
        _sync(file)


def _sync(file: Any) -> None:
    # On disk before the rename publishes the entry, so a crash cannot expose empty files.
    file.flush()
    os.fsync(file.fileno())
