"""Ctrl-C and SIGTERM during training: finish the step, save a checkpoint, exit with a resume hint.

Outside a training step (loading, feature extraction, evaluation) a signal
interrupts at once, as it normally would: there is nothing new to save. A
second signal always interrupts at once.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class InterruptGuard:
    """Turns SIGINT / SIGTERM into a flag the training loop checks after each optimizer step."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.in_training = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> InterruptGuard:
        try:
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None or not self.in_training:
            # Not in a step, or asked twice: stop now.
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.received = signum
        logger.warning(
            "%s received: saving a checkpoint after this step (send it again to stop at once).",
            signal.Signals(signum).name,
        )

    @property
    def requested(self) -> bool:
        return self.received is not None


__all__ = ["InterruptGuard"]
