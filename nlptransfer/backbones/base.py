"""The Backbone contract that every source model family meets.

A backbone turns raw inputs (texts, later images) into hidden states per layer,
knows its own preprocessing (tokenize + collate), exposes its parameters as
ordered *layer groups* (bottom to top) so strategies can freeze, unfreeze and
scale learning rates without knowing the architecture, and saves everything it
needs to be rebuilt, except its weights, which :class:`TransferModel` stores in
one safetensors file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from nlptransfer.errors import ConfigError
from nlptransfer.registry import Registry

GroupKind = Literal["embeddings", "block", "final"]


@dataclass
class LayerGroup:
    """Parameters that train (or stay frozen) together, e.g. one transformer layer."""

    name: str
    kind: GroupKind
    parameters: list[tuple[str, nn.Parameter]] = field(default_factory=list)

    def num_parameters(self) -> int:
        return sum(p.numel() for _, p in self.parameters)

    def set_trainable(self, trainable: bool) -> None:
        for _, param in self.parameters:
            param.requires_grad_(trainable)


@dataclass
class BackboneOutput:
    last_hidden_state: torch.Tensor
    attention_mask: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


class Backbone(nn.Module, ABC):
    """Abstract base class of every source model.

    Subclasses set ``registry_name`` (the name saved in model configs) and
    ``hidden_size``, and implement the abstract methods below.
    """

    registry_name: str = ""
    hidden_size: int
    # What the backbone reads ("text" or "image"), and whether its examples vary in length.
    modality: str = "text"
    variable_length: bool = True

    @abstractmethod
    def tokenize(
        self, texts: list[str], text_pairs: list[str] | None, max_length: int
    ) -> dict[str, list[list[int]]]:
        """Preprocess raw inputs into per-example, unpadded features."""

    @abstractmethod
    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad a list of per-example features into a batch of tensors."""

    def tokenize_windows(self, texts: list[str], max_length: int, stride: int) -> list[list[dict[str, Any]]]:
        """Each text as overlapping windows of at most ``max_length`` tokens, consecutive windows
        sharing ``stride`` tokens (``--long_text chunk``). Backbones that read token sequences
        implement it."""
        raise ConfigError(
            f"--long_text chunk splits token sequences into windows; the {self.registry_name} backbone "
            "reads each text whole. Use --long_text truncate, or a Hugging Face text model."
        )

    @abstractmethod
    def forward(self, output_hidden_states: bool = False, **inputs: torch.Tensor) -> BackboneOutput:
        """Run the model on a collated batch."""

    @abstractmethod
    def layer_groups(self) -> list[LayerGroup]:
        """All parameters as ordered groups, from the input side to the output side."""

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable settings needed (with :meth:`save`) to rebuild this backbone."""

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Write the files (not the weights) needed to rebuild this backbone."""

    @classmethod
    @abstractmethod
    def from_saved(cls, directory: Path, config: dict[str, Any]) -> Backbone:
        """Rebuild from :meth:`save` output with randomly initialised weights."""

    @property
    def reads_windows(self) -> bool:
        """True when the backbone implements ``tokenize_windows`` (``--long_text chunk``)."""
        return type(self).tokenize_windows is not Backbone.tokenize_windows

    @property
    def max_positions(self) -> int | None:
        """Longest input the model accepts, if it has such a limit."""
        return None

    def block_groups(self) -> list[LayerGroup]:
        return [g for g in self.layer_groups() if g.kind == "block"]

    def num_blocks(self) -> int:
        return len(self.block_groups())

    def num_hidden_states(self) -> int:
        """How many hidden states ``forward(output_hidden_states=True)`` returns."""
        return self.num_blocks() + 1

    def reinit_top_blocks(self, k: int) -> None:
        """Give the top ``k`` blocks fresh random weights, as the source model initialised them."""
        raise ConfigError(
            f"--reinit_layers is not supported by the {self.registry_name} backbone; "
            "it works with Hugging Face transformer models."
        )

    def _check_reinit(self, k: int) -> None:
        if not 0 < k <= self.num_blocks():
            raise ConfigError(
                f"--reinit_layers {k} is out of range: this model has {self.num_blocks()} layers; "
                f"use a value from 1 to {self.num_blocks()}."
            )

    def state_width(self, index: int) -> int:
        """Width of hidden state ``index`` (as ``forward(output_hidden_states=True)`` returns them)."""
        return self.hidden_size

    @property
    def uniform_hidden_states(self) -> bool:
        """True when every hidden state has the same width, so several can be pooled together."""
        return True

    @property
    def has_untrained_blocks(self) -> bool:
        """True when some blocks start random (e.g. a BiLSTM on word vectors): they must train."""
        return False

    # Running the top of the body on stored inputs (the activation cache): a backbone that can
    # capture what enters a block and later start its forward pass there sets ``replays_blocks``.

    @property
    def replays_blocks(self) -> bool:
        """True when ``block_input`` and ``replaying`` are implemented."""
        return False

    def frozen_bottom(self) -> int:
        """How many blocks, from the bottom, are frozen together with the embeddings (0 when the
        embeddings or the first block train; ``num_blocks()`` when the whole body is frozen)."""
        count = 0
        for group in self.layer_groups():
            if group.kind == "final" or any(p.requires_grad for _, p in group.parameters):
                break
            count += group.kind == "block"
        return count

    def frozen_bottom_modules(self) -> Iterator[nn.Module]:
        """The modules that compute the frozen bottom (embeddings and the blocks below
        ``frozen_bottom()``), parameterless ones such as dropout included; backbones that replay
        blocks name them."""
        return iter(())

    def block_input(self, block: int, **inputs: torch.Tensor) -> torch.Tensor:
        """The hidden states entering block ``block`` for a collated batch (padded like it), the
        blocks from ``block`` up not run."""
        raise ConfigError(f"The {self.registry_name} backbone cannot start its forward pass at a block.")

    def replaying(self, block: int, states: torch.Tensor) -> AbstractContextManager[None]:
        """Inside: the forward pass skips the blocks below ``block`` and feeds it ``states`` (as
        ``block_input`` gave them) instead."""
        raise ConfigError(f"The {self.registry_name} backbone cannot start its forward pass at a block.")


BACKBONES: Registry[type[Backbone]] = Registry("backbone")
