"""Files on disk: folders written so that a failure never leaves a mix of old and new, and the cache root.

Two ways to publish, one helper each:
- ``replace_files``: a model or run folder. The new files are written in full to a staging
  folder inside the target first; only then do they replace the old ones, the files whose
  presence marks a complete folder removed first and moved in last.
- ``staging_folder``: a cache entry. The entry is written in full next to where it goes, then
  renamed into place in one step; the caller decides what to do when another process got there
  first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from nlptransfer.errors import SaveError, write_errors

# Prefixes of what a write leaves while in progress: never read as a finished folder or entry.
SAVING_PREFIX = ".saving-"
TMP_PREFIX = ".tmp-"
CACHE_ENV = "NLPTRANSFER_CACHE_DIR"


@contextmanager
def replace_files(target: Path, what: str, kept: str, markers: Sequence[str] = ()) -> Iterator[Path]:
    """Yield an empty staging folder inside ``target``; what is written there replaces the
    entries (files or folders) of the same names in ``target`` once the block ends.

    A write that fails (a full disk) raises :class:`SaveError` naming ``what`` and saying
    ``kept`` (what stayed as it was); nothing in ``target`` has changed then. ``markers`` are
    removed first and moved in last, in their order: a crash while moving leaves a folder
    that does not read as complete, never old weights under a new config.
    """
    target = Path(target)
    try:
        target.mkdir(parents=True, exist_ok=True)
        staging_dir = tempfile.TemporaryDirectory(
            dir=target, prefix=SAVING_PREFIX, ignore_cleanup_errors=True
        )
    except OSError as err:
        raise SaveError(f"Could not create the folder {target} for {what}: {err}.") from err
    with staging_dir as tmp:
        staging = Path(tmp)
        try:
            yield staging
        except SaveError:
            raise
        except write_errors() as err:
            raise SaveError(
                f"Could not save {what} to {target}: {err} (disk full?). Nothing there was replaced: {kept}"
            ) from err
        _move_in(staging, target, markers)


def _move_in(staging: Path, target: Path, markers: Sequence[str]) -> None:
    for name in markers:
        (target / name).unlink(missing_ok=True)
    order = {name: i for i, name in enumerate(markers, start=1)}
    for entry in sorted(staging.iterdir(), key=lambda p: order.get(p.name, 0)):
        destination = target / entry.name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        os.replace(entry, destination)


@contextmanager
def staging_folder(parent: Path, prefix: str = TMP_PREFIX) -> Iterator[Path]:
    """A new folder next to where an entry goes (same file system: renaming it is atomic);
    removed at the end unless the caller renamed it into place."""
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def resolve_cache_dir(cache_dir: str | None = None) -> Path:
    """``--cache_dir``, else ``$NLPTRANSFER_CACHE_DIR``, else ``~/.cache/nlptransfer/features``."""
    chosen = cache_dir or os.environ.get(CACHE_ENV)
    if chosen:
        return Path(chosen).expanduser()
    return Path.home() / ".cache" / "nlptransfer" / "features"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half a file."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)
