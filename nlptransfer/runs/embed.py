"""``nlptransfer embed``: the embeddings of a file of texts, for models of your own.

Any source (a short name, hub id or folder, word vectors, ELMo) or the trained body of a run's
output folder; any pooling and layers. The body's per-layer features are exactly what training's
frozen-body phases cache (``engine.features``), under the same key: an identical second call, or
texts a run already extracted, cost no forward pass. The output (``.npy`` plus ``<stem>.ids.npy``,
or one ``.parquet`` of ids and vectors) is written in full before it replaces anything.
docs/embeddings.md shows downstream use.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nlptransfer.config import Seeded, VocabularyOptions, _opt, parse_config
from nlptransfer.errors import ConfigError, DataError, OutputDirExistsError

if TYPE_CHECKING:  # torch loads when embed runs, not when the options parse
    import torch

    from nlptransfer.data import EncodedDataset
    from nlptransfer.model.transfer import LongText, TransferModel

logger = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".npy", ".parquet")
# An untrained ELMo scalar mix weighs every layer alike: softmax(0) = 1/L, gamma = 1, i.e. the mean.
LAYER_MIXES = ("mean", "concat")
DEFAULT_MAX_LENGTH = 128  # train's default: embeddings of a source match the features a run trains on
PARQUET_METADATA_KEY = b"nlptransfer"


@dataclass
class EmbedConfig(VocabularyOptions, Seeded):
    """Everything one ``nlptransfer embed`` call needs. Every field is a CLI flag."""

    model: str = _opt(
        "minilm",
        "Short name (minilm), hub id or folder of a source model, word vectors (glove:PATH, "
        "word2vec:PATH, fasttext:PATH, glove-6b-50d), elmo:FOLDER, or the output folder of a "
        "training run (its trained body is used, with the run's pooling, layers and long-text "
        "settings unless given here).",
    )
    input_file: str | None = _opt(
        None, "The texts: CSV/TSV, JSON/JSONL, parquet, a saved `datasets` folder, or .txt (one per line)."
    )
    text_column: str = _opt("text", "Column holding the texts (tables).")
    id_column: str | None = _opt(
        None, "Column of unique ids written beside the vectors. Default: the row number, from 0."
    )
    output: str | None = _opt(
        None,
        "Where to write: FILE.npy (float32 rows, in input order; the ids go to FILE.ids.npy) or "
        "FILE.parquet (columns id and embedding, a list of float32).",
    )
    pooling: str | None = _opt(
        None, "How token states become one vector: mean, cls, max or last. Default: the run's, else mean."
    )
    layers: list[int | str] | None = _opt(
        None,
        "Hidden layers to pool (-1 = top, 0 = embeddings), or 'all' (every layer, ELMo-style). "
        "Default: the run's, else -1.",
    )
    layer_mix: str | None = _opt(
        None,
        "How several layers combine: mean (what ELMo's scalar mix is before training) or concat. "
        "Default: a run's own (its trained mix), else mean for 'all' and concat for a list.",
    )
    max_length: int | None = _opt(
        None, f"Truncate texts to this many tokens (the window size with --long_text chunk). "
        f"Default: the run's, else {DEFAULT_MAX_LENGTH}.",
    )  # fmt: skip
    long_text: str | None = _opt(
        None,
        "Texts longer than --max_length: truncate (keep their start) or chunk (overlapping windows "
        "pooled into one vector per text; Hugging Face text models). Default: the run's, else truncate.",
    )
    chunk_stride: int | None = _opt(
        None, "--long_text chunk: tokens consecutive windows share (default: the run's, else max_length / 4)."
    )
    chunk_pooling: str | None = _opt(
        None, "--long_text chunk: how a text's windows combine, mean or max (default: the run's, else mean)."
    )
    batch_size: int = _opt(64, "Texts per forward pass.")
    normalize: bool = _opt(False, "Scale every vector to unit L2 norm (dot product = cosine similarity).")
    feature_cache: bool = _opt(
        True,
        "Reuse the body's features from the feature cache (an identical earlier call, or a run's "
        "frozen-body features of the same texts) and store new ones there (--no-feature_cache: neither).",
    )
    cache_dir: str | None = _opt(
        None,
        "Folder of the feature cache (default: $NLPTRANSFER_CACHE_DIR, else ~/.cache/nlptransfer/features).",
    )
    overwrite: bool = _opt(False, "Replace an existing --output (otherwise refused).")
    trust_remote_code: bool = _opt(False, "Allow a model's own code (hub or folder). Off: never run it.")
    cpu: bool = _opt(False, "Run on CPU even when a GPU is present.")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("input_file", "output"):
            if not getattr(self, name):
                raise ConfigError(f"--{name} is required, e.g. --input_file texts.csv --output texts.npy.")
        if Path(self.output).suffix not in OUTPUT_SUFFIXES:
            raise ConfigError(
                f"--output '{self.output}' must end in .npy (vectors, with the ids in a .ids.npy beside "
                "it) or .parquet (ids and vectors in one table)."
            )
        self._check_positive(("batch_size",))
        self._check_positive(("max_length",), optional=True)
        self._check_options()

    def _check_options(self) -> None:
        if self.layer_mix is not None:
            self._check_choice("layer_mix", LAYER_MIXES)
        if self.long_text is not None:
            self._check_choice("long_text", ("truncate", "chunk"))
        if self.chunk_pooling is not None:
            self._check_choice("chunk_pooling", ("mean", "max"))
        if self.long_text == "truncate" and (self.chunk_stride is not None or self.chunk_pooling is not None):
            raise ConfigError("--chunk_stride and --chunk_pooling apply to --long_text chunk; drop them.")
        if self.layers and self.layers != ["all"]:
            try:
                self.layers = [int(i) for i in self.layers]
            except ValueError as err:
                raise ConfigError(
                    f"--layers takes layer indices such as -1 or '-4 -3 -2 -1', or 'all'; got {self.layers}."
                ) from err

    @property
    def ids_file(self) -> Path | None:
        """Where the ids go: FILE.ids.npy beside FILE.npy; inside the table for parquet."""
        output = Path(self.output).expanduser()
        return output.with_name(f"{output.stem}.ids.npy") if output.suffix == ".npy" else None


@dataclass
class Texts:
    """The texts to embed, in input order, and the id of each."""

    texts: list[str]
    ids: np.ndarray


# ---------------------------------------------------------------- the command


def run_embed_command(argv: Sequence[str]) -> int:
    """``nlptransfer embed ARGS``: parse, embed, print the summary as JSON."""
    config = parse_config(
        EmbedConfig, argv, description="Write the embeddings of a file of texts (.npy or parquet) with "
        "their ids, from any source model or a trained run's body; see docs/embeddings.md.",
    )  # fmt: skip
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    print(json.dumps(embed(config), indent=2))
    return 0


def embed(config: EmbedConfig, progress: bool = True) -> dict[str, Any]:
    """Write the embeddings of ``config.input_file`` to ``config.output``; return a summary: the
    files, rows, dim, seconds, and whether the feature cache had the body's features."""
    import torch

    start = time.perf_counter()
    output = check_output(config)
    texts = read_input(config)
    model = build_model(config, texts.texts)
    device = torch.device("cuda" if torch.cuda.is_available() and not config.cpu else "cpu")
    dataset = _encode(model, texts.texts)
    features, cache = cached_layer_features(model, dataset, config, device, progress)
    vectors = combine_layers(model, features, config.normalize)
    describe = describe_model(config, model)
    write_embeddings(output, config.ids_file, vectors, texts.ids, describe)
    files = {"output": str(output), "ids_file": str(config.ids_file) if config.ids_file else None}
    shape = {"rows": int(vectors.shape[0]), "dim": int(vectors.shape[1])}
    return {**files, **shape, "seconds": round(time.perf_counter() - start, 3), "cache": cache, **describe}


def check_output(config: EmbedConfig) -> Path:
    """The output path, refused (before any work) when it exists and --overwrite is not given."""
    output = Path(config.output).expanduser()
    if output.is_dir():
        raise OutputDirExistsError(
            f"--output '{output}' is a folder; pass a file path ending in .npy or .parquet."
        )
    if output.exists() and not config.overwrite:
        raise OutputDirExistsError(
            f"--output '{output}' already exists. Pass --overwrite to replace it, or choose another path."
        )
    return output


# ---------------------------------------------------------------- input


def read_input(config: EmbedConfig) -> Texts:
    """The texts (missing ones as empty texts, so rows stay aligned with the file) and their ids."""
    from nlptransfer.data import read_texts

    path = Path(config.input_file).expanduser()
    if path.suffix == ".txt" and path.is_file():
        if config.id_column:
            raise ConfigError("A .txt file has one text per line and no columns; drop --id_column.")
        texts = read_texts(config.input_file)  # blank lines are skipped; ids count the texts read
        read = Texts(texts, np.arange(len(texts), dtype=np.int64))
    else:
        read = _read_table_texts(config)
    if not read.texts:
        raise DataError(f"'{config.input_file}' holds no texts; check the file and --text_column.")
    return read


def _read_table_texts(config: EmbedConfig) -> Texts:
    from nlptransfer.data import MissingColumnsError, read_table

    columns = [c for c in dict.fromkeys((config.text_column, config.id_column)) if c]
    try:
        # Read as written: "007" stays a text (and an id) rather than the number 7.
        frames = read_table(config.input_file, columns=columns, text_columns=columns)
    except MissingColumnsError as err:
        raise DataError(f"{err} Pass --text_column (and --id_column) naming the columns to read.") from err
    if len(frames) > 1:
        raise DataError(
            f"'{config.input_file}' holds several splits ({', '.join(frames)}); embed one at a time: "
            "save the split you want as its own file (e.g. dataset['test'].to_parquet('test.parquet'))."
        )
    frame = next(iter(frames.values()))
    column = frame[config.text_column]
    missing = int(column.isna().sum())
    if missing:
        logger.warning(
            "%d rows have no text; they are embedded as empty texts, to keep rows aligned", missing
        )
    texts = column.fillna("").astype(str).tolist()
    ids = _ids(frame[config.id_column], config) if config.id_column else np.arange(len(texts), dtype=np.int64)
    return Texts(texts, ids)


def _ids(values: Any, config: EmbedConfig) -> np.ndarray:
    """Integer ids as int64; any other ids as strings (both load without pickle)."""
    if values.isna().any():
        raise DataError(
            f"--id_column '{config.id_column}' is empty in {int(values.isna().sum())} rows of "
            f"'{config.input_file}'; fill them in, or drop --id_column to use row numbers."
        )
    strings = values.astype(str)
    duplicated = strings[strings.duplicated()].unique()
    if len(duplicated):
        raise DataError(
            f"--id_column '{config.id_column}' repeats {len(duplicated)} ids (e.g. {duplicated[0]!r}); ids "
            "must be unique. Name a column of unique ids, or drop --id_column to use row numbers."
        )
    if all(s.lstrip("-").isdigit() and str(int(s)) == s for s in strings):
        try:
            return strings.astype(np.int64).to_numpy()
        except (OverflowError, ValueError):  # past 64 bits: keep the digits as text
            pass
    return strings.to_numpy(dtype=str)


# ---------------------------------------------------------------- the model


def build_model(config: EmbedConfig, texts: list[str]) -> TransferModel:
    """The body (a source's, or a run's trained one) with the pooling, layers and text handling asked
    for; a word-vector source builds its vocabulary from ``texts``."""
    from nlptransfer.backbones import is_word_vector_source
    from nlptransfer.model.pooling import POOLINGS
    from nlptransfer.model.transfer import TransferModel, load_backbone
    from nlptransfer.runs.finetune import vocab_options

    if config.pooling is not None:
        POOLINGS.get(config.pooling)  # an unknown name fails before a model loads
    if is_trained_run(config.model):
        run = TransferModel.from_pretrained(Path(config.model).expanduser(), config.trust_remote_code)
        return _assemble(config, run.backbone, run)
    if is_word_vector_source(config.model) and config.word_encoder != "none":
        raise ConfigError(
            f"--word_encoder {config.word_encoder} starts from random weights, which give meaningless "
            "embeddings. Train it first (nlptransfer train --word_encoder ...), then pass the run's "
            "output folder as --model; or drop --word_encoder for a bag of word vectors."
        )
    vocabulary = VocabularyOptions.of(config)
    backbone = load_backbone(
        config.model, config.trust_remote_code, vocabulary_texts=texts,
        word_options=vocab_options(vocabulary, config.seed), allow_pickle=config.allow_pickle,
    )  # fmt: skip
    return _assemble(config, backbone, None)


def is_trained_run(model: str) -> bool:
    """Whether ``--model`` names a folder a training run (or ``save_pretrained``) wrote."""
    from nlptransfer.model.transfer import CONFIG_NAME

    return (Path(model).expanduser() / CONFIG_NAME).is_file()


def _assemble(config: EmbedConfig, backbone: Any, run: TransferModel | None) -> TransferModel:
    """The model that embeds: ``run``'s settings where options are not given, else the defaults."""
    from nlptransfer.model.transfer import TransferModel

    if backbone.modality != "text":
        raise ConfigError(f"nlptransfer embed reads texts; '{config.model}' is an image model.")
    saved = run.pooling.get_config() if run is not None else {"type": "mean", "layers": [-1], "mix": "concat"}
    layers = config.layers or saved["layers"]
    layers = "all" if layers == ["all"] else layers
    # The default fits the model (a note only when a --max_length asked for more than it accepts).
    default = run.max_length if run is not None else min(DEFAULT_MAX_LENGTH, backbone.max_positions or 10**9)
    max_length = config.max_length or default
    model = TransferModel.from_backbone(
        backbone, ["_"], config.pooling or saved["type"], layers, _layer_mix(config, layers, saved),
        max_length=max_length, long_text=_long_text(config, run, backbone, max_length),
    )  # fmt: skip
    if run is not None and config.pooling is None and config.layers is None and config.layer_mix is None:
        model.pooling.load_state_dict(run.pooling.state_dict())  # the run's trained layer mix, if any
    return model.eval()


def _layer_mix(config: EmbedConfig, layers: Any, saved: dict[str, Any]) -> str:
    """TransferModel's mix: 'scalar' (untrained: the mean of the layers) or 'concat'."""
    if config.layer_mix is not None:
        return "scalar" if config.layer_mix == "mean" else "concat"
    if config.layers is None:
        return saved["mix"]  # a run's own (or a source's default single layer)
    return "scalar" if layers == "all" else "concat"


def _long_text(
    config: EmbedConfig, run: TransferModel | None, backbone: Any, max_length: int
) -> LongText | None:
    """Windows pooled per text (--long_text chunk, or a run trained so), else None: truncate."""
    from nlptransfer.model.transfer import LongText

    saved = run.long_text if run is not None else None
    if (config.long_text or ("chunk" if saved else "truncate")) == "truncate":
        return None
    window = min(max_length, backbone.max_positions or max_length)
    same_windows = saved is not None and run is not None and window == run.max_length
    stride = config.chunk_stride
    if stride is None:
        stride = saved.stride if same_windows else window // 4
    return LongText(stride, config.chunk_pooling or (saved.pooling if saved else "mean"))


def describe_model(config: EmbedConfig, model: TransferModel) -> dict[str, Any]:
    """What produced the vectors, for the summary and the parquet file's metadata."""
    long_text = dataclasses.asdict(model.long_text) if model.long_text is not None else None
    mix = "mean" if model.pooling.mix_mode == "scalar" else "concat"
    if mix == "mean" and config.layer_mix is None and config.layers is None and is_trained_run(config.model):
        mix = "trained"  # the run's learned ELMo-style weights
    return {
        "model": config.model, "pooling": model.pooling.mode, "layers": list(model.pooling.layers),
        "layer_mix": mix, "max_length": model.max_length, "long_text": long_text,
        "normalize": config.normalize,
    }  # fmt: skip


# ---------------------------------------------------------------- features


def _encode(model: TransferModel, texts: list[str]) -> EncodedDataset:
    from nlptransfer.data import EncodedDataset

    return EncodedDataset(model.preprocess(texts), np.zeros(len(texts), dtype=np.int64))


def cached_layer_features(
    model: TransferModel, dataset: EncodedDataset, config: EmbedConfig, device: torch.device, progress: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """``model.layer_features`` of every text (rows, layers, hidden), from the feature cache when an
    entry has them (the same key as training's frozen-body features), else computed and stored."""
    from nlptransfer.engine.cache import FeatureCache
    from nlptransfer.engine.features import features_key_parts, split_key, store_features
    from nlptransfer.files import resolve_cache_dir

    if not config.feature_cache:
        return compute_layer_features(model, dataset, config.batch_size, device, progress), {"enabled": False}
    cache = FeatureCache(resolve_cache_dir(config.cache_dir))
    key = split_key(features_key_parts(model, device.type), dataset)
    info = {"enabled": True, "dir": str(cache.root), "entry": key.digest}
    cached = cache.load(key, rows=len(dataset))
    if cached is not None:
        logger.info("feature cache hit: %s", cache.path(key))
        return cached, {**info, "hit": True}
    values = compute_layer_features(model, dataset, config.batch_size, device, progress)
    store_features(cache, key, values)
    return values, {**info, "hit": False}


def compute_layer_features(
    model: TransferModel, dataset: EncodedDataset, batch_size: int, device: torch.device, progress: bool
) -> np.ndarray:
    """The body's pooled features per layer, in length-sorted batches (little padding), rows in
    input order."""
    import torch
    from tqdm.auto import tqdm

    from nlptransfer.data.loaders import collate_examples
    from nlptransfer.engine.inference import length_sorted_batches
    from nlptransfer.model.transfer import align_padding

    model.to(device).eval()
    align_padding(model, device)
    values: np.ndarray | None = None
    bar = tqdm(total=len(dataset), desc="embed", unit="text", disable=not progress)
    with torch.inference_mode(), bar:
        for idx in length_sorted_batches(dataset.lengths(), batch_size):
            batch = collate_examples(model.backbone, [dataset.encodings[i] for i in idx])
            rows = model.layer_features(**{k: v.to(device) for k, v in batch.items()}).float().cpu().numpy()
            if values is None:
                values = np.zeros((len(dataset), *rows.shape[1:]), dtype=np.float32)
            values[idx] = rows
            bar.update(len(idx))
    assert values is not None  # read_input refuses an empty file
    return values


def combine_layers(model: TransferModel, features: np.ndarray, normalize: bool) -> np.ndarray:
    """(rows, layers, hidden) features -> (rows, dim) float32 vectors, as ``model.encode`` combines
    them; unit length with ``normalize``."""
    import torch

    pooling = model.pooling.cpu()
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(features), 4096):  # a memory-mapped cache entry is read in slices
            block = pooling.combine(torch.from_numpy(np.array(features[start : start + 4096], np.float32)))
            chunks.append(torch.nn.functional.normalize(block, dim=1) if normalize else block)
    return torch.cat(chunks).numpy().astype(np.float32, copy=False)


# ---------------------------------------------------------------- output


def write_embeddings(
    output: Path, ids_file: Path | None, vectors: np.ndarray, ids: np.ndarray, metadata: dict[str, Any]
) -> None:
    """Write the vectors and ids in full beside ``output``, then move them in, ``output`` last (and an
    old one removed first): an interrupted call never leaves a half-written or mismatched pair."""
    from nlptransfer.files import replace_files

    kept = "any earlier file there is unchanged."
    with replace_files(
        output.parent, f"the embeddings {output.name}", kept, markers=(output.name,)
    ) as staging:
        if ids_file is None:
            _write_parquet(staging / output.name, vectors, ids, metadata)
            return
        for name, array in ((ids_file.name, ids), (output.name, vectors)):
            with open(staging / name, "wb") as file:
                np.save(file, array, allow_pickle=False)


def _write_parquet(path: Path, vectors: np.ndarray, ids: np.ndarray, metadata: dict[str, Any]) -> None:
    """Columns ``id`` and ``embedding`` (a fixed-size list of float32); what made them in the metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = pa.array(np.ascontiguousarray(vectors).reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    table = pa.table({"id": pa.array(ids), "embedding": column})
    table = table.replace_schema_metadata({PARQUET_METADATA_KEY: json.dumps(metadata).encode()})
    pq.write_table(table, path)
