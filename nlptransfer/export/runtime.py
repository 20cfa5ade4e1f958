"""Run an ONNX export with onnxruntime, tokenizers and numpy only: no torch, no transformers.

``OnnxModel.from_pretrained(folder).predict(texts)`` answers as ``TransferModel.predict`` does:
the same tokenisation (the exported ``tokenizer.json``, truncated at the model's ``max_length``),
long texts read in the same overlapping windows, the calibrated probabilities computed inside the
graph, and the answers decoded by :mod:`nlptransfer.tasks.answers` from the saved task state
(multi-label thresholds included).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from nlptransfer.errors import ConfigError, ModelLoadError
from nlptransfer.tasks.answers import Predictions, decode

EXPORT_CONFIG = "nlptransfer_onnx.json"
ONNX_NAME = "model.onnx"
TOKENIZER_NAME = "tokenizer.json"
# Graph inputs beside the tokenizer's: the text of each window, and the texts' indices (their
# count is the graph's number of output rows).
WINDOW_OWNER, WINDOW_TEXTS = "window_owner", "window_texts"
OUTPUT_NAME = "scores"


def is_export(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds an ONNX export (rather than a trained run)."""
    return (Path(directory) / EXPORT_CONFIG).is_file()


def _missing(what: str, extra: str = "onnx") -> ModelLoadError:
    return ModelLoadError(
        f"Running an ONNX export needs {what}: pip install 'nlptransfer[{extra}]' "
        "(onnxruntime, tokenizers, numpy; no torch)."
    )


class OnnxModel:
    """An exported model: an onnxruntime session, its tokenizer and its config."""

    def __init__(self, session: Any, tokenizer: Any, config: dict[str, Any]) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.config = config
        self.labels: list[str] = list(config["labels"])
        self.max_length: int = int(config["max_length"])
        self.input_names: list[str] = list(config["inputs"])
        self.long_text: dict[str, Any] | None = config.get("long_text")
        self.pair_encoding: str = config.get("pair_encoding", "joint")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], threads: int | None = None) -> OnnxModel:
        """Load a folder written by ``nlptransfer export``; ``threads``: onnxruntime's intra-op
        threads (default: its own choice, one per physical core)."""
        path = Path(directory)
        if not is_export(path):
            raise ModelLoadError(
                f"{path} is not an ONNX export (no {EXPORT_CONFIG}). Export a trained run with "
                "`nlptransfer export RUN_DIR OUTPUT_DIR --format onnx`."
            )
        config = json.loads((path / EXPORT_CONFIG).read_text())
        try:
            import onnxruntime
        except ImportError as err:
            raise _missing("onnxruntime") from err
        try:
            from tokenizers import Tokenizer
        except ImportError as err:
            raise _missing("tokenizers") from err
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(
            str(path / config.get("onnx_file", ONNX_NAME)), options, providers=["CPUExecutionProvider"]
        )
        tokenizer = Tokenizer.from_file(str(path / TOKENIZER_NAME))
        tokenizer.no_padding()
        return cls(session, tokenizer, config)

    @property
    def problem_type(self) -> str:
        return str(self.config["task"]["type"])

    def tokenize(self, texts: list[str], text_pairs: list[str] | None = None) -> list[list[dict[str, Any]]]:
        """Each text's windows (one window unless the model reads long texts whole), each a dict of
        the graph's token inputs, as ``TransferModel.preprocess`` makes them."""
        stride = int(self.long_text["stride"]) if self.long_text else 0
        side = self.config.get("truncation_side", "right")
        self.tokenizer.enable_truncation(self.max_length, stride=stride, direction=side)
        if self.pair_encoding == "separate":
            if text_pairs is None:
                raise ConfigError(
                    "This model reads text pairs (--pair_encoding separate): give each text its pair."
                )
            first, second = self._encode(texts), self._encode(text_pairs)
            return [[a[0], b[0]] for a, b in zip(first, second, strict=True)]
        if self.long_text and text_pairs is not None:
            raise ConfigError("--long_text chunk reads single texts; text pairs are cut at --max_length.")
        return self._encode(texts, text_pairs)

    def _encode(self, texts: list[str], text_pairs: list[str] | None = None) -> list[list[dict[str, Any]]]:
        batch = list(texts) if text_pairs is None else list(zip(texts, text_pairs, strict=True))
        encoded = []
        for encoding in self.tokenizer.encode_batch(batch):
            windows = [encoding, *encoding.overflowing] if self.long_text else [encoding]
            encoded.append([self._inputs(window) for window in windows])
        return encoded

    def _inputs(self, encoding: Any) -> dict[str, list[int]]:
        if not encoding.ids:  # as the torch model does: an empty text reads as one filler token
            return {
                "input_ids": [self.config["filler_token_id"]],
                "attention_mask": [1],
                "token_type_ids": [0],
            }
        return {
            "input_ids": encoding.ids,
            "attention_mask": encoding.attention_mask,
            "token_type_ids": encoding.type_ids,
        }

    def _feed(self, examples: list[list[dict[str, Any]]]) -> dict[str, np.ndarray]:
        windows = [window for example in examples for window in example]
        width = max(len(w["input_ids"]) for w in windows)
        pads = {"input_ids": self.config["pad_token_id"]}
        feed = {}
        for name in self.input_names:
            if name in (WINDOW_OWNER, WINDOW_TEXTS):
                continue
            rows = [w[name] + [pads.get(name, 0)] * (width - len(w[name])) for w in windows]
            feed[name] = np.asarray(rows, dtype=np.int64)
        if WINDOW_OWNER in self.input_names:
            owners = [i for i, example in enumerate(examples) for _ in example]
            feed[WINDOW_OWNER] = np.asarray(owners, dtype=np.int64)
            feed[WINDOW_TEXTS] = np.arange(len(examples), dtype=np.int64)
        return feed

    def scores(self, examples: list[list[dict[str, Any]]], batch_size: int = 32) -> np.ndarray:
        """The graph's output (calibrated probabilities, or values) for tokenised examples, in
        length-sorted batches (little padding), returned in the examples' order."""
        lengths = [sum(len(w["input_ids"]) for w in example) for example in examples]
        order = np.argsort(lengths, kind="stable")
        scores = np.zeros((len(examples), len(self.labels)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            feed = self._feed([examples[i] for i in idx])
            scores[idx] = self.session.run([OUTPUT_NAME], feed)[0]
        return scores

    def predict(
        self,
        inputs: str | list[str],
        text_pairs: list[str] | None = None,
        batch_size: int = 32,
        abstain_threshold: float | None = None,
    ) -> Predictions:
        """Answers and their scores for texts, as ``TransferModel.predict`` gives them."""
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}.")
        if not texts:
            empty = np.zeros((0, len(self.labels)), dtype=np.float32)
            return Predictions([], empty, self.labels, self.problem_type)
        scores = self.scores(self.tokenize(texts, text_pairs), batch_size)
        state = {k: v for k, v in self.config["task"].items() if k != "type"}
        answers = Predictions(
            decode(self.problem_type, scores, self.labels, **state), scores, self.labels, self.problem_type
        )
        return answers.abstain(abstain_threshold)
