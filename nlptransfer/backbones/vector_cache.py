"""Word-vector files parsed once: later loads memory-map a converted copy.

Parsing GloVe's 400,000-line text file takes gensim most of a minute. The first
load converts it to ``vectors.npy`` (float32, memory-mapped on later loads) plus
``words.json`` in ``<cache root>/vectors/<digest>/``; the digest covers the file's
resolved path, size and modification time, so an edited file converts again.
Entries are written to a temporary folder and renamed into place: a reader sees
a whole entry or none. Nothing in an entry is a pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nlptransfer.files import resolve_cache_dir, staging_folder

logger = logging.getLogger(__name__)

FORMAT = 1
MATRIX_FILE, WORDS_FILE = "vectors.npy", "words.json"


def entry_dir(kind: str, file: Path, root: Path | None = None) -> Path:
    stat = file.stat()
    parts = [str(FORMAT), kind, str(file.resolve()), str(stat.st_size), str(stat.st_mtime_ns)]
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=16).hexdigest()
    return (root or resolve_cache_dir()) / "vectors" / digest


def load_converted(
    kind: str, file: Path, parse: Callable[[], tuple[list[str], np.ndarray]], root: Path | None = None
) -> tuple[list[str], np.ndarray]:
    """(words, matrix) of ``file``: memory-mapped from the cache, else parsed by ``parse`` and cached."""
    entry = entry_dir(kind, file, root)
    cached = _read(entry)
    if cached is not None:
        return cached
    words, matrix = parse()
    try:
        _write(entry, words, np.asarray(matrix, dtype=np.float32))
        logger.info("converted %s once to %s; later loads memory-map it", file, entry)
    except OSError as err:  # a read-only or full disk costs speed, never the run
        logger.warning(
            "could not cache the converted vectors of %s (%s); they will be parsed again", file, err
        )
    return words, matrix


def _read(entry: Path) -> tuple[list[str], np.ndarray] | None:
    try:
        words = json.loads((entry / WORDS_FILE).read_text(encoding="utf-8"))
        matrix = np.load(entry / MATRIX_FILE, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if matrix.ndim != 2 or len(words) != matrix.shape[0]:
        logger.warning("ignoring a damaged converted-vectors entry %s", entry)
        return None
    return words, matrix


def _write(entry: Path, words: list[str], matrix: np.ndarray) -> None:
    with staging_folder(entry.parent) as staging:
        np.save(staging / MATRIX_FILE, matrix)
        (staging / WORDS_FILE).write_text(json.dumps(words, ensure_ascii=False), encoding="utf-8")
        if _read(entry) is not None:  # another process converted the same file meanwhile
            return
        shutil.rmtree(entry, ignore_errors=True)  # a damaged entry: replaced, not kept forever
        os.replace(staging, entry)
