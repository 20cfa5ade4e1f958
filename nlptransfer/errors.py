"""Error hierarchy.

Every error a user can cause derives from :class:`NLPTransferError` *and* the
matching builtin, so ``except ValueError`` keeps working for callers that do not
know this library. Messages say what was wrong, what was expected, and the fix.
"""

from __future__ import annotations


class NLPTransferError(Exception):
    """Base class of every error raised on purpose by nlptransfer."""


class ConfigError(NLPTransferError, ValueError):
    """An option has a value that cannot work."""


class UnknownNameError(ConfigError):
    """A registry lookup (strategy, pooling, backbone, metric, ...) failed."""


class DataError(NLPTransferError, ValueError):
    """The user's data cannot be used as given."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file or folder does not exist."""


class ModelLoadError(NLPTransferError, OSError):
    """A model could not be found or loaded."""


class OutputDirExistsError(NLPTransferError, FileExistsError):
    """The output folder already holds another run."""


class SaveError(NLPTransferError, OSError):
    """A model, checkpoint or run could not be written (disk full, no permission).

    Raised only after the partial write was removed, so what was saved before is
    still valid.
    """


# What a failed write raises, by writer: Python file I/O an OSError (ENOSPC, EFBIG, EACCES),
# safetensors a SafetensorError ("I/O error: ..."), torch.save a RuntimeError
# ("PytorchStreamWriter failed writing file").
def write_errors() -> tuple[type[BaseException], ...]:
    """The exception types a full disk raises from the writers nlptransfer uses."""
    from safetensors import SafetensorError

    return (OSError, RuntimeError, SafetensorError)


class TrainingError(NLPTransferError, RuntimeError):
    """Training cannot go on (for example the loss became NaN)."""


class TrainingInterrupted(NLPTransferError):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved."""

    def __init__(self, message: str, signum: int, checkpoint: str | None) -> None:
        super().__init__(message)
        self.signum = signum
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
