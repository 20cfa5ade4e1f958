"""Shared fixtures: a tiny BERT built from a config, tiny datasets, run helpers.

Nothing here touches a model hub: the tokenizer is assembled from a word list
with the ``tokenizers`` library and the model is randomly initialised.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
POSITIVE = ["good", "great", "excellent", "wonderful", "superb"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dull"]
FILLER = ["the", "a", "movie", "film", "plot", "acting", "was", "is", "and"]


def _build_tiny_bert(directory: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'")
    tokens = specials + POSITIVE + NEGATIVE + FILLER + chars + ["##" + c for c in chars]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )
    fast.save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(directory)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Path of a tiny random BERT (2 layers, hidden 32) with its tokenizer."""
    directory = tmp_path_factory.mktemp("tiny-bert")
    _build_tiny_bert(directory)
    return str(directory)


def sentiment_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """Easily separable two-class texts: the label is given by the sentiment words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(POSITIVE if label == "pos" else NEGATIVE, 2) + rng.sample(FILLER, 3)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return pd.DataFrame(rows)


@pytest.fixture
def sentiment_csv(tmp_path: Path) -> Path:
    path = tmp_path / "train.csv"
    sentiment_frame(160).to_csv(path, index=False)
    return path


def run_script(args: list[str], cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's environment; never raises on failure."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        args, cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def free_port() -> int:
    """A TCP port nobody listens on (torchrun's port 0 does not pick one: it hangs)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def recipe(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "recipes" / "finetune.py"), *args]
