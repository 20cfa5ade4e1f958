"""The trainable-layer table: which parts of a model train under a strategy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass
class LayerRow:
    name: str
    parameters: int
    trainable_parameters: int

    @property
    def trainable(self) -> str:
        if self.trainable_parameters == 0:
            return "no"
        return "yes" if self.trainable_parameters == self.parameters else "partial"


def _row(name: str, params: list[nn.Parameter]) -> LayerRow:
    return LayerRow(name, sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad))


def trainable_rows(model: nn.Module) -> list[LayerRow]:
    """One row per backbone layer group (bottom to top), then pooling and head."""
    rows = [
        _row(f"backbone.{group.name}", [p for _, p in group.parameters])
        for group in model.backbone.layer_groups()
    ]
    for name in ("pooling", "head"):
        params = list(getattr(model, name).parameters())
        if params:
            rows.append(_row(name, params))
    return rows


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors are counted once."""
    unique = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in unique if p.requires_grad), sum(p.numel() for p in unique)


def format_table(rows: list[LayerRow]) -> str:
    """A Markdown table with totals, readable in a terminal and on GitHub."""
    width = max(len(r.name) for r in [*rows, LayerRow("module", 0, 0)])
    lines = [
        f"| {'module':<{width}} | {'parameters':>12} | trainable |",
        f"|{'-' * (width + 2)}|{'-' * 13}:|:---------:|",
    ]
    lines += [f"| {r.name:<{width}} | {r.parameters:>12,} | {r.trainable:^9} |" for r in rows]
    total = sum(r.parameters for r in rows)
    trainable = sum(r.trainable_parameters for r in rows)
    share = 100.0 * trainable / total if total else 0.0
    lines.append(f"| {'total':<{width}} | {total:>12,} | {trainable:,} ({share:.2f}%) |")
    return "\n".join(lines)


def phase_tables(model: nn.Module, phases: Sequence[Any]) -> str:
    """The trainable-layer table of every phase, configuring each in turn (also validates them).

    Leaves the model configured for the last phase.
    """
    if len(phases) == 1:
        phases[0].configure(model)
        return format_table(trainable_rows(model))
    parts = []
    for i, phase in enumerate(phases, 1):
        phase.configure(model)
        how = "closed form" if phase.closed_form else f"{phase.epochs} epoch{'s' * (phase.epochs != 1)}"
        parts.append(
            f"Phase {i}: {phase.name} ({phase.loop}, {how})\n\n{format_table(trainable_rows(model))}"
        )
    return "\n\n".join(parts)
