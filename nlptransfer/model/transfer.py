"""TransferModel: backbone + pooling + head, with save / load / predict."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from packaging.version import InvalidVersion, Version
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from nlptransfer.backbones import (
    BACKBONES,
    Backbone,
    ImageBackbone,
    ImageOptions,
    VocabOptions,
    load_source,
    peft_adapter,
)
from nlptransfer.data.loaders import BLOCK_INPUT, REPLAY_BLOCK, WINDOWS, collate_examples, example_length
from nlptransfer.errors import ConfigError, ModelLoadError
from nlptransfer.files import replace_files
from nlptransfer.model.heads import LinearHead, build_head
from nlptransfer.model.pooling import WINDOW_POOLING, Pooling, pool_windows
from nlptransfer.tasks.answers import Predictions
from nlptransfer.tasks.base import DEFAULT_TASK, Task, build_task
from nlptransfer.version import __version__

logger = logging.getLogger(__name__)

CONFIG_NAME = "transfer_config.json"
WEIGHTS_NAME = "model.safetensors"
BACKBONE_DIR = "backbone"
_CONFIG_KEYS = {
    "nlptransfer_version",
    "backbone",
    "pooling",
    "head",
    "labels",
    "max_length",
    "task",
    "long_text",
    "pair_encoding",
}


PAIR_ENCODINGS = ("joint", "separate")


@dataclass(frozen=True)
class LongText:
    """Texts longer than ``max_length`` read whole: overlapping windows of ``max_length`` tokens,
    consecutive ones sharing ``stride`` tokens, their features pooled (mean or max) per text."""

    stride: int
    pooling: str = "mean"

    def check(self, max_length: int) -> None:
        if self.pooling not in WINDOW_POOLING:
            raise ConfigError(f"--chunk_pooling must be mean or max, got '{self.pooling}'.")
        if not 0 <= self.stride <= max_length // 2:
            raise ConfigError(
                f"--chunk_stride {self.stride} must be between 0 and half of --max_length {max_length}: "
                "consecutive windows share that many tokens, and each window must move on."
            )


class TransferModel(nn.Module):
    """A pretrained body with a new classification head.

    ``forward`` takes either tokenised inputs (runs the body) or precomputed
    ``features`` (skips it), so frozen-body strategies can train the head on
    cached features with the very same module.
    """

    def __init__(
        self,
        backbone: Backbone,
        pooling: Pooling,
        head: nn.Module,
        labels: list[str],
        max_length: int = 128,
        task: str | dict[str, Any] | Task = DEFAULT_TASK,
        long_text: LongText | None = None,
        pair_encoding: str = "joint",
    ) -> None:
        super().__init__()
        if len(labels) != head.num_labels:
            raise ConfigError(f"{len(labels)} label names given for a head with {head.num_labels} outputs.")
        self.backbone = backbone
        self.pooling = pooling
        self.head = head
        self.labels = list(labels)
        self.max_length = max_length
        # The loss, the activation and how outputs become answers (with the task's saved state).
        self.task = task if isinstance(task, Task) else build_task(task)
        # None: texts are cut at max_length; else read in overlapping windows pooled per text.
        self.long_text = long_text
        # Text pairs: "joint" (one sequence, as a cross-encoder reads them) or "separate" (each text
        # encoded alone, then [u, v, |u - v|, u * v], as sentence-transformers' bi-encoders do).
        self.pair_encoding = pair_encoding

    @classmethod
    def from_backbone(
        cls,
        model: str | Backbone,
        labels: list[str],
        pooling: str = "mean",
        layers: list[int] | str | None = None,
        layer_mix: str | None = None,
        head_dropout: float = 0.1,
        max_length: int = 128,
        trust_remote_code: bool = False,
        task: str | Task = DEFAULT_TASK,
        long_text: LongText | None = None,
        pair_encoding: str = "joint",
    ) -> TransferModel:
        """A new classifier on a pretrained source (short name, folder, hub id or Backbone).

        ``layers="all"`` pools every hidden state; ``layer_mix`` is ``"concat"`` or
        ``"scalar"`` (ELMo's learned mix; the default for ``"all"``). ``task`` is a
        :class:`~nlptransfer.tasks.base.Task` or a registered task's name (what the model predicts
        and trains with); ``labels`` names the head's outputs (classes, labels or targets).
        """
        if isinstance(model, Backbone):
            backbone = model
        else:
            backbone = load_backbone(model, trust_remote_code=trust_remote_code)
        num_states = backbone.num_hidden_states()
        if layers == "all":
            layers, layer_mix = list(range(num_states)), layer_mix or "scalar"
        pooler = Pooling(pooling, layers or [-1], mix=layer_mix or "concat")
        pooler.check_layers(num_states)
        if pair_encoding not in PAIR_ENCODINGS:
            raise ConfigError(f"--pair_encoding must be joint or separate, got '{pair_encoding}'.")
        pooled = _pooled_width(backbone, pooler)
        width = pooler.output_dim(4 * pooled if pair_encoding == "separate" else pooled)
        head = LinearHead(width, len(labels), dropout=head_dropout)
        limit = backbone.max_positions
        if limit is not None and max_length > limit:
            logger.warning("max_length %d exceeds what the model accepts; using %d.", max_length, limit)
            max_length = limit
        if long_text is not None:
            long_text.check(max_length)
            if pair_encoding == "separate":
                raise ConfigError(
                    "--long_text chunk reads single texts; --pair_encoding separate reads pairs."
                )
        return cls(backbone, pooler, head, labels, max_length, task, long_text, pair_encoding)

    def train(self, mode: bool = True) -> TransferModel:
        """Training mode, except for a frozen bottom of the body (embeddings and the blocks below the
        first trainable one), which stays in eval mode: without dropout its output for an example
        never changes, so the activation cache can compute it once (and a run without the cache
        gives the same results)."""
        super().train(mode)
        backbone = self.backbone
        if mode and backbone.replays_blocks and 0 < backbone.frozen_bottom() < backbone.num_blocks():
            for module in backbone.frozen_bottom_modules():
                module.eval()
        return self

    def new_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters this toolkit adds on top of the source model: the head and any layer mix."""
        return [(f"head.{n}", p) for n, p in self.head.named_parameters()] + [
            (f"pooling.{n}", p) for n, p in self.pooling.named_parameters()
        ]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def layer_features(
        self,
        window_owner: torch.Tensor | None = None,
        window_texts: torch.Tensor | None = None,
        **inputs: torch.Tensor,
    ) -> torch.Tensor:
        """(batch, layers, hidden): what a frozen body contributes, cacheable across epochs.

        A batch of windows (``window_owner``: the text of each) gives one row per text, its
        windows' features pooled (``window_texts``: 0, 1, ..., texts - 1, for an exported graph)."""
        states, block = inputs.pop(BLOCK_INPUT, None), inputs.pop(REPLAY_BLOCK, None)
        if states is None:
            output = self.backbone(output_hidden_states=self.pooling.needs_hidden_states, **inputs)
        else:  # the activation cache: the frozen bottom's output, computed once, enters ``block``
            with self.backbone.replaying(int(block), states):
                output = self.backbone(output_hidden_states=self.pooling.needs_hidden_states, **inputs)
        features = self.pooling.pool_layers(output)
        if window_owner is None:
            return features
        if self.long_text is None:  # a pair's two texts, encoded apart: [u, v, |u - v|, u * v]
            u, v = features[0::2], features[1::2]
            return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)
        return pool_windows(features, window_owner, self.long_text.pooling, window_texts)

    def encode(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Pooled, combined body features for a collated batch."""
        return self.pooling.combine(self.layer_features(**inputs))

    def forward(
        self, features: torch.Tensor | None = None, return_embeddings: bool = False, **inputs: torch.Tensor
    ) -> torch.Tensor:
        """Logits from tokenised inputs, or from ``features`` given by :meth:`layer_features`.

        ``return_embeddings=True`` stops before the head (contrastive training runs
        through here so DistributedDataParallel sees the forward pass).
        """
        pooled = self.encode(**inputs) if features is None else self.pooling.combine(features)
        return pooled if return_embeddings else self.head(pooled)

    def preprocess(self, texts: list[Any], text_pairs: list[str] | None = None) -> list[dict[str, Any]]:
        """Per-example model inputs for raw texts (token ids; windows of them for long texts) or
        images (resized pixels)."""
        if self.long_text is not None:
            if text_pairs is not None:
                raise ConfigError("--long_text chunk reads single texts; text pairs are cut at --max_length.")
            windows = self.backbone.tokenize_windows(list(texts), self.max_length, self.long_text.stride)
            return [{WINDOWS: text_windows} for text_windows in windows]
        if self.pair_encoding == "separate":
            if text_pairs is None:
                raise ConfigError(
                    "This model reads text pairs (--pair_encoding separate): give each text its pair."
                )
            first, second = (self._encode_each(part) for part in (texts, text_pairs))
            return [{WINDOWS: [a, b]} for a, b in zip(first, second, strict=True)]
        return self._encode_each(texts, text_pairs)

    def _encode_each(self, texts: list[Any], text_pairs: list[str] | None = None) -> list[dict[str, Any]]:
        encoded = self.backbone.tokenize(list(texts), text_pairs, self.max_length)
        keys = list(encoded)
        return [dict(zip(keys, values, strict=True)) for values in zip(*encoded.values(), strict=True)]

    @torch.inference_mode()
    def predict(
        self,
        inputs: Any,
        text_pairs: list[str] | None = None,
        batch_size: int = 32,
        abstain_threshold: float | None = None,
    ) -> Predictions:
        """Answers and their scores for raw texts (optionally text pairs), or for images: a label and
        class probabilities, a label set and each label's probability, or predicted values.
        ``abstain_threshold``: answer "unsure" where the predicted class's probability is below it.

        ``inputs``: a text or a list of texts; for an image model an image (path, array,
        PIL image) or a list of them, or an ``(N, H, W[, C])`` array.
        """
        inputs = _as_list(inputs, self.backbone.modality)
        was_training = self.training
        self.eval()
        examples = self.preprocess(inputs, text_pairs)
        # Length-sorted batches waste no compute on padding; the order is restored below.
        order = sorted(range(len(examples)), key=lambda i: example_length(examples[i]))
        device = next(self.parameters()).device
        align_padding(self, device)
        probs = np.zeros((len(examples), self.num_labels), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate_examples(self.backbone, [examples[i] for i in idx])
            logits = self(**{k: v.to(device) for k, v in batch.items()})
            probs[idx] = self.task.activate(logits).cpu().numpy()
        self.train(was_training)
        answers = Predictions(self.task.decode(probs, self.labels), probs, list(self.labels), self.task.name)
        return answers.abstain(abstain_threshold)

    def merge_adapter(self) -> TransferModel:
        """Fold a LoRA-like adapter into the body's weights: a plain model that loads without peft.

        Prompt and prefix tuning have no weight update to merge (ConfigError).
        """
        peft_adapter.merge_adapter(self.backbone)
        return self

    def get_config(self) -> dict[str, Any]:
        backbone = {"type": self.backbone.registry_name, **self.backbone.get_config()}
        adapter = peft_adapter.adapter_state(self.backbone)
        if adapter is not None:  # from_pretrained re-creates the adapter layers before loading weights
            backbone[peft_adapter.ADAPTER_CONFIG_KEY] = adapter
        return {
            "nlptransfer_version": __version__,
            "backbone": backbone,
            "pooling": self.pooling.get_config(),
            "head": self.head.get_config(),
            "labels": self.labels,
            "max_length": self.max_length,
            "task": self.task.get_config(),
            "long_text": asdict(self.long_text) if self.long_text is not None else None,
            "pair_encoding": self.pair_encoding,
        }

    def save_pretrained(
        self, directory: str | os.PathLike[str], weights: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Write config, weights (safetensors) and backbone files to ``directory``.

        ``weights``: the full state dict to write instead of the model's own tensors (a model
        sharded by FSDP holds only its process's part: ``engine.sharding.whole_state_dict``).

        Files are first written to a temporary folder and moved in with the
        config last, so an interrupted save never leaves a folder that loads as
        a mix of old and new files.
        """
        kept = "a model saved in that folder before is unchanged."
        with replace_files(Path(directory), "the model", kept, markers=(CONFIG_NAME,)) as staging:
            self._write_files(staging, weights)

    def _write_files(self, staging: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        if weights is None:
            save_model(self, str(staging / WEIGHTS_NAME))
        else:
            save_file({name: t.contiguous() for name, t in weights.items()}, str(staging / WEIGHTS_NAME))
        self.backbone.save(staging / BACKBONE_DIR)
        body = None if weights is None else {k.removeprefix("backbone."): v for k, v in weights.items()}
        peft_adapter.save_adapter(self.backbone, staging / BACKBONE_DIR / peft_adapter.ADAPTER_DIR, body)
        (staging / CONFIG_NAME).write_text(json.dumps(self.get_config(), indent=2))

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], trust_remote_code: bool = False
    ) -> TransferModel:
        """Load a folder written by :meth:`save_pretrained`; needs no other knowledge.

        A model trained with ``trust_remote_code`` runs code from its folder when
        rebuilt, so it loads only if the caller passes ``trust_remote_code=True``
        too: a saved file never turns it on by itself.
        """
        path = Path(directory)
        config = _read_config(path)
        backbone_config = _remote_code_gate(config["backbone"], trust_remote_code, path)
        backbone_cls = BACKBONES.get(backbone_config["type"])
        backbone = backbone_cls.from_saved(path / BACKBONE_DIR, backbone_config)
        if peft_adapter.ADAPTER_CONFIG_KEY in config["backbone"]:
            peft_adapter.restore_adapter(backbone, config["backbone"][peft_adapter.ADAPTER_CONFIG_KEY])
        head = build_head(config["head"])
        if head.num_labels != len(config["labels"]):
            raise ModelLoadError(
                f"{path / CONFIG_NAME} is inconsistent: the head has {head.num_labels} outputs "
                f"but {len(config['labels'])} label names are listed."
            )
        saved = config["pooling"]
        pooling = Pooling(saved["type"], saved.get("layers", [-1]), mix=saved.get("mix", "concat"))
        # Models saved before tasks existed are single-label; before task state, a name.
        task = build_task(config.get("task", DEFAULT_TASK))
        long_text = LongText(**config["long_text"]) if config.get("long_text") else None
        pairs = config.get("pair_encoding", "joint")
        model = cls(backbone, pooling, head, config["labels"], config["max_length"], task, long_text, pairs)
        try:
            load_model(model, str(path / WEIGHTS_NAME), strict=True)
        except Exception as err:  # safetensors raises several unrelated types
            raise ModelLoadError(
                f"Could not load weights from {path / WEIGHTS_NAME}: {err}. The file is missing, "
                "truncated or does not match the saved config; save the model again."
            ) from err
        return model.eval()


def load_backbone(
    name_or_path: str,
    trust_remote_code: bool = False,
    vocabulary_texts: list[str] | None = None,
    word_options: VocabOptions | None = None,
    allow_pickle: bool = False,
    from_scratch: bool = False,
    image_options: ImageOptions | None = None,
) -> Backbone:
    """A pretrained backbone from a source model (``backbones.load_source``: HF short name, folder
    or hub id, word vectors, ELMo, torchvision), or the trained body of a folder a run wrote (its
    head is dropped)."""
    if not (Path(name_or_path).expanduser() / CONFIG_NAME).is_file():
        return load_source(
            name_or_path,
            trust_remote_code,
            vocabulary_texts,
            word_options,
            allow_pickle,
            from_scratch,
            image_options,
        )
    if from_scratch:
        raise ModelLoadError(
            f"'{name_or_path}' is a trained nlptransfer model; --from_scratch would discard its weights. "
            "Pass the original source model with --from_scratch instead."
        )
    backbone = TransferModel.from_pretrained(name_or_path, trust_remote_code).backbone
    if isinstance(backbone, ImageBackbone) and image_options is not None:
        backbone.set_options(image_options)
    logger.info("Starting from the trained body in %s (its head is dropped).", name_or_path)
    return backbone


def align_padding(model: TransferModel, device: torch.device) -> None:
    """On a GPU, pad batches to a multiple of 8 tokens; on a CPU, to the longest text only.

    Length-grouped batches come in dozens of widths, and cuDNN's attention plans every
    new shape: in a torch profile of MiniLM on an H100 its forward and backward took
    7.6 and 8.5 ms of CPU per call, and the loop was CPU-bound. Widths up to 128 then
    come in 16 sizes, each planned once (bf16 fine-tuning went from 458 to 811
    samples/s; docs/benchmarks.md). Multiples of 8 also suit tensor cores. A CPU
    gains nothing from extra padding.
    """
    if hasattr(model.backbone, "pad_to_multiple_of"):
        model.backbone.pad_to_multiple_of = 8 if device.type == "cuda" else None


def _pooled_width(backbone: Backbone, pooler: Pooling) -> int:
    """Width of the pooled layers: the top output, or the selected hidden states (one width)."""
    if not pooler.needs_hidden_states:
        return backbone.hidden_size
    widths = sorted({backbone.state_width(i) for i in pooler.layers})
    if len(widths) > 1:
        raise ConfigError(
            f"Layers {pooler.layers} have different widths {widths} (a CNN's stages) and cannot be "
            "combined; pool one layer, e.g. --layers -1 or --layers -2."
        )
    return widths[0]


def _as_list(inputs: Any, modality: str) -> list[Any]:
    """One input or many, as a list: a lone text, path or image array becomes a list of one."""
    if isinstance(inputs, str | Path):
        return [inputs]
    if modality == "image":
        if isinstance(inputs, np.ndarray | torch.Tensor):
            # (H, W) and (H, W, C) are one image; (N, H, W) and (N, H, W, C) a batch. Pass a
            # channels-first (C, H, W) image inside a list.
            single = inputs.ndim == 2 or (inputs.ndim == 3 and inputs.shape[-1] in (1, 3, 4))
            return [inputs] if single else list(inputs)
        if hasattr(inputs, "convert"):  # one PIL image
            return [inputs]
    return list(inputs)


def _remote_code_gate(backbone: dict[str, Any], trust_remote_code: bool, path: Path) -> dict[str, Any]:
    """The saved backbone config, with remote code allowed only if the caller allows it."""
    if backbone.get("trust_remote_code") and not trust_remote_code:
        raise ModelLoadError(
            f"{path / CONFIG_NAME} says this model runs code shipped in its folder "
            "(it was trained with --trust_remote_code). Read that code, then pass "
            "--trust_remote_code (trust_remote_code=True) to load it."
        )
    # The caller's flag alone decides: a tampered config.json may ask for code even when
    # transfer_config.json does not, and transformers then refuses unless the caller allowed it.
    return {**backbone, "trust_remote_code": trust_remote_code}


def _read_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG_NAME
    if not file.is_file():
        raise ModelLoadError(
            f"'{path}' is not a saved nlptransfer model: {CONFIG_NAME} is missing. Pass the "
            "output folder of a finished run, or a folder written by TransferModel.save_pretrained."
        )
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{file} is not valid JSON ({err}); the save was damaged.") from err
    missing = {"backbone", "pooling", "head", "labels", "max_length"} - set(config)
    if missing:
        raise ModelLoadError(f"{file} lacks the keys {sorted(missing)}; the save was damaged.")
    unknown = set(config) - _CONFIG_KEYS
    if unknown:
        logger.warning("Ignoring unknown keys %s in %s (saved by a newer version?)", sorted(unknown), file)
    saved_version = str(config.get("nlptransfer_version", ""))
    if _newer(saved_version, __version__):
        logger.warning(
            "%s was saved by nlptransfer %s, newer than this %s; loading what this version knows. "
            "Upgrade nlptransfer if the model misbehaves.",
            file,
            saved_version,
            __version__,
        )
    return config


def _newer(saved: str, current: str) -> bool:
    try:
        return Version(saved) > Version(current)
    except InvalidVersion:  # absent or hand-edited: nothing to compare
        return False
