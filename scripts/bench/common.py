"""What every benchmark section shares: the result row, paths, the benchmark texts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# Peers (sentence-transformers, SetFit) live here, never in nlptransfer's own venv.
PEER_PYTHON = REPO / ".venv-setfit" / "bin" / "python"


@dataclass
class Result:
    section: str
    what: str
    ours: str
    peer: str
    ratio: float
    target: float
    details: dict[str, Any] = field(default_factory=dict)
    # A second condition beside the ratio (few-shot: accuracy within 1 point of the peer's).
    condition: bool = True

    @property
    def met(self) -> bool:
        return self.ratio >= self.target and self.condition


def texts_of_corpus(limit: int) -> list[str]:
    """The first ``limit`` training texts of the built-in movie-review corpus (fixed split)."""
    from nlptransfer import FinetuneConfig
    from nlptransfer.data import load_data

    return load_data(FinetuneConfig()).train.inputs[:limit]
