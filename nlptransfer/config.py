"""Run configuration: flat dataclasses made of sections, validated on construction, parsed from YAML + CLI."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from nlptransfer.errors import ConfigError
from nlptransfer.registry import closest_hint
from nlptransfer.version import __version__

C = TypeVar("C")

MIXED_PRECISION = ("no", "fp16", "bf16")
HEAD_TYPES = ("linear", "logistic-cv", "ridge-cv")
# How a run's choices are made and scored (--protocol).
PROTOCOLS = ("auto", "holdout", "cross-validation")
# The names transformers uses in ``config.problem_type``.
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
CLASS_WEIGHTS = ("auto", "balanced", "none")
CALIBRATIONS = ("temperature", "none")
# How the contrastive strategy pairs its training examples (nlptransfer.engine.objectives.contrastive).
PAIR_SAMPLING = ("in-batch", "oversampling", "iterations")
LR_SCHEDULERS = ("linear", "cosine", "constant", "slanted-triangular")
# jsonl is nlptransfer's own; the others are accelerate's trackers (accelerate.utils.LoggerType).
TRACKERS = ("jsonl", "tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab",
            "trackio", "none")  # fmt: skip


def _opt(default: Any, help: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


S = TypeVar("S", bound="Section")


@dataclass
class Section:
    """A group of options that validates its own fields.

    The flat configs (``FinetuneConfig``, ``PretrainConfig``: the command line's front door)
    inherit the sections they need; inner code takes only the section it reads (``Section.of``).
    """

    def __post_init__(self) -> None:
        """Each section checks its own fields, then hands on to the next one (cooperatively)."""

    @classmethod
    def of(cls: type[S], config: Any) -> S:
        """This section's options out of a flat config (validated again, on their own)."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})

    def _check_range(self, name: str, low: float, high: float) -> None:
        value = getattr(self, name)
        if not low <= value <= high:
            raise ConfigError(f"--{name} must be between {low} and {high}, got {value}.")

    def _check_positive(self, names: Sequence[str], optional: bool = False) -> None:
        for name in names:
            value = getattr(self, name)
            if not (optional and value is None) and value < 1:
                raise ConfigError(f"--{name} must be at least 1, got {value}.")

    def _check_choice(self, name: str, valid: Sequence[str]) -> None:
        value = getattr(self, name)
        if value not in valid:
            raise ConfigError(
                f"--{name} must be one of {', '.join(valid)}, got '{value}'."
                + closest_hint(value, list(valid))
            )

    def to_dict(self) -> dict[str, Any]:
        return {"nlptransfer_version": __version__, **dataclasses.asdict(self)}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2))


@dataclass
class Seeded(Section):
    """The random seed, shared by the loop and the data splits."""

    seed: int = _opt(42, "Random seed for initialisation, shuffling and splits of user data.")


@dataclass
class TrainingOptions(Seeded):
    """The loop's section: optimisation, output, checkpoint and tracking options of every recipe."""

    # Optimisation
    epochs: int | None = _opt(None, "Training epochs (default depends on the recipe and strategy).")
    batch_size: int = _opt(32, "Training batch size per process.")
    eval_batch_size: int = _opt(64, "Batch size for evaluation and feature extraction.")
    learning_rate: float | None = _opt(
        None, "Peak learning rate (default depends on the recipe and strategy)."
    )
    weight_decay: float = _opt(0.01, "AdamW weight decay.")
    lr_scheduler: str = _opt(
        "linear",
        "Learning-rate schedule after warmup: linear (decay to 0), cosine, constant, or "
        "slanted-triangular (ULMFiT: short linear rise, long linear fall to peak / --stlr_ratio).",
    )
    warmup_ratio: float | None = _opt(
        None,
        "Fraction of optimizer steps spent warming up (ULMFiT's cut_frac for slanted-triangular). "
        "Default: 0.1 for slanted-triangular, 0.06 otherwise.",
    )
    stlr_ratio: float = _opt(32.0, "slanted-triangular: how much smaller the lowest LR is than the peak.")
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm (0 disables).")
    gradient_accumulation_steps: int = _opt(1, "Micro-batches per optimizer step.")
    mixed_precision: str = _opt("no", "no, fp16 or bf16 (passed to accelerate).")
    torch_compile: bool = _opt(
        False,
        "Compile the model with torch.compile (inductor): faster steps on a GPU after a first compiled "
        "step that takes a while; on a CPU it needs a C++ compiler.",
    )
    # Output, checkpoints and tracking
    output_dir: str | None = _opt(None, "Where to write the model and results (default: runs/...).")
    overwrite_output_dir: bool = _opt(False, "Replace an output folder that holds another run.")
    save_steps: int = _opt(500, "Save a checkpoint every N optimizer steps (0: only at epoch ends).")
    save_every_epoch: bool = _opt(
        True,
        "Also save a checkpoint at the end of every epoch (of in-batch contrastive pairs, whose epochs "
        "are a few steps: at the end of the phase).",
    )
    save_total_limit: int = _opt(2, "Keep only the newest K checkpoints (0: keep every one).")
    resume_from_checkpoint: str | None = _opt(
        None,
        "Continue a stopped run: 'latest' (the newest complete checkpoint in --output_dir) "
        "or the path of one checkpoint folder.",
    )
    logging_steps: int = _opt(10, "Log loss, learning rate and throughput every N optimizer steps.")
    report_to: list[str] = _opt(
        ["jsonl", "tensorboard"],
        "Trackers: jsonl (always), tensorboard (when installed), any other tracker accelerate supports "
        "(wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio; its package must be "
        "installed), or none.",
    )
    push_to_hub: bool = _opt(False, "Upload the saved model folder to the Hugging Face Hub at the end.")
    hub_model_id: str | None = _opt(
        None, "Hub repository for --push_to_hub (default: the output folder's name under your account)."
    )
    cpu: bool = _opt(False, "Run on CPU even when a GPU is present.")
    num_threads: int | None = _opt(
        None, "CPU threads per process (default: this machine's cores / local processes)."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive(
            ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "logging_steps")
        )
        for name in ("save_steps", "save_total_limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}.")
        self._check_positive(("epochs", "num_threads"), optional=True)
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ConfigError(f"--learning_rate must be positive, got {self.learning_rate}.")
        if self.warmup_ratio is not None:
            self._check_range("warmup_ratio", 0.0, 1.0)
        if self.stlr_ratio < 1:
            raise ConfigError(f"--stlr_ratio must be at least 1, got {self.stlr_ratio}.")
        self._check_choice("lr_scheduler", LR_SCHEDULERS)
        self._check_choice("mixed_precision", MIXED_PRECISION)
        self.report_to = self.report_to or ["none"]  # an empty YAML list means no tracker
        unknown = [t for t in self.report_to if t not in TRACKERS]
        if unknown:
            raise ConfigError(f"--report_to takes {', '.join(TRACKERS)}; got {', '.join(unknown)}.")
        if self.push_to_hub and self.hub_model_id is not None and self.hub_model_id.count("/") > 1:
            raise ConfigError(
                f"--hub_model_id must look like 'name' or 'user/name', got '{self.hub_model_id}'."
            )

    @property
    def warmup(self) -> float:
        """The warmup fraction in effect (the schedule's default when not given)."""
        if self.warmup_ratio is not None:
            return self.warmup_ratio
        return 0.1 if self.lr_scheduler == "slanted-triangular" else 0.06

    @property
    def trackers(self) -> list[str]:
        return [] if "none" in self.report_to else list(dict.fromkeys(self.report_to))


@dataclass
class TextSource(Section):
    """Where texts come from: a built-in dataset or the user's file (fine-tuning and pretraining)."""

    dataset: str = _opt("movie-reviews", "Built-in dataset used when --train_file is not given.")
    train_file: str | None = _opt(
        None,
        "CSV, JSON/JSONL, parquet or saved `datasets` folder (pretraining also reads .txt, one text "
        "per line).",
    )
    text_column: str = _opt("text", "Column holding the text.")


@dataclass
class DataOptions(TextSource, Seeded):
    """The data section: files, columns, splits and sampling of labelled data (``data.load_data``)."""

    validation_file: str | None = _opt(None, "Validation data; default: split off the training data.")
    test_file: str | None = _opt(None, "Test data; default: --test_split of the training data, or none.")
    image_column: str | None = _opt(
        None,
        "Column holding images (file paths relative to the data file, arrays, or datasets Image "
        "values): trains an image classifier. Default: 'image' when the data has it and no text column.",
    )
    text_pair_column: str | None = _opt(None, "Optional second text column (sentence pairs).")
    label_column: str = _opt(
        "label", "Column holding the label (strings or integers), or the numeric target."
    )
    label_columns: list[str] | None = _opt(
        None,
        "Several label columns instead of --label_column: 0/1 columns, one per label (multi-label), "
        "or numeric targets (regression with several outputs).",
    )
    label_separator: str | None = _opt(
        None,
        "Multi-label: the label column holds a row's labels joined by this (e.g. ';'); an empty cell "
        "means no label applies.",
    )
    problem_type: str | None = _opt(
        None,
        "single_label_classification, multi_label_classification or regression. Default: inferred "
        "from the labels (and logged); a run whose labels could be either stops and asks.",
    )
    validation_split: float = _opt(0.1, "Fraction of training data held out when no validation file.")
    test_split: float = _opt(0.0, "Fraction of training data held out as test set when no test file.")
    max_train_examples: int | None = _opt(None, "Use only this many training examples (quick runs).")
    samples_per_label: int | None = _opt(
        None, "Few-shot: keep K training examples per label, drawn with --seed (validation/test unchanged)."
    )
    validation_samples_per_label: int | None = _opt(
        None,
        "Keep only K validation examples per label (few-shot protocol: as many labelled dev "
        "examples as training ones); default: the whole validation split.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_range("validation_split", 0.0, 0.9)
        self._check_range("test_split", 0.0, 0.9)
        if self.validation_split + self.test_split >= 0.95:
            raise ConfigError("--validation_split + --test_split leave almost no training data.")
        counts = ("max_train_examples", "samples_per_label", "validation_samples_per_label")
        self._check_positive(counts, optional=True)
        if self.problem_type is not None:
            self._check_choice("problem_type", PROBLEM_TYPES)
        if self.label_separator is not None and self.label_columns:
            raise ConfigError(
                "--label_separator splits one label column; --label_columns names one column per label. "
                "Pass one of them."
            )
        if self.label_separator == "":
            raise ConfigError("--label_separator must not be empty; e.g. ';' or ','.")
        if self.samples_per_label is not None and self.max_train_examples is not None:
            raise ConfigError(
                "--samples_per_label and --max_train_examples both limit the training data; pass one."
            )


@dataclass
class AdapterOptions(Section):
    """The PEFT adapter section (--strategy lora, loha, ia3, prefix-tuning, prompt-tuning)."""

    lora_r: int = _opt(8, "lora / loha: rank of the weight update.")
    lora_alpha: int = _opt(16, "lora / loha: the update is scaled by lora_alpha / lora_r.")
    lora_dropout: float = _opt(0.1, "lora / loha: dropout on the adapter's input.")
    target_modules: list[str] | None = _opt(
        None,
        "lora / loha / ia3: layers to adapt, by name or name suffix (e.g. query value), or all-linear. "
        "Default: peft's choice for the model family (BERT query value, GPT-2 c_attn, Llama q_proj "
        "v_proj, T5 q v), else all-linear.",
    )
    num_virtual_tokens: int = _opt(20, "prompt-tuning / prefix-tuning: number of virtual tokens.")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive(("lora_r", "num_virtual_tokens"))
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}.")


@dataclass
class VocabularyOptions(Section):
    """The word-vector section (--model glove:PATH, word2vec:PATH, fasttext:PATH, kv:PATH, glove-6b-50d)."""

    word_encoder: str = _opt("none", "On word vectors: none (bag of embeddings), bilstm or cnn.")
    word_weighting: str = _opt("none", "On word vectors: none, or sif (a/(a+p(w)) token weights).")
    oov: str = _opt("zero", "Training words without a vector: zero, random, or subword (fastText .bin).")
    word_lowercase: bool = _opt(
        True, "Lowercase text before the word-vector lookup (GloVe 6B is lowercased)."
    )
    min_word_count: int = _opt(1, "Keep training words seen at least this often in the vocabulary.")
    max_vocab_size: int = _opt(50_000, "At most this many words in the vocabulary.")
    allow_pickle: bool = _opt(
        False, "Allow gensim's native KeyedVectors files (kv:PATH), which are pickles: trusted files only."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_choice("word_encoder", ("none", "bilstm", "cnn"))
        self._check_choice("word_weighting", ("none", "sif"))
        self._check_choice("oov", ("zero", "random", "subword"))


@dataclass
class FinetuneConfig(TrainingOptions, DataOptions, AdapterOptions, VocabularyOptions):
    """Everything one run of ``recipes/finetune.py`` needs. Every field is a CLI flag."""

    # Source model and strategy
    model: str = _opt("minilm", "Short name (minilm), local folder or hub id of the source model.")
    strategy: str = _opt(
        "auto",
        "Transfer strategy: auto (chosen for the data and --time_budget_minutes, see docs/auto.md), "
        "feature-extraction, finetune, layerwise-lr-decay, gradual-unfreezing, lp-ft, contrastive, or a "
        "PEFT adapter (lora, ia3, prefix-tuning, prompt-tuning).",
    )
    time_budget_minutes: float | None = _opt(
        5.0,
        "The longest run auto may choose (and advise may recommend), loading and testing included; "
        "training is planned within 95% of what is left. A strategy estimated to take longer runs fewer "
        "epochs (while they make 250 optimizer steps), else gives way to a cheaper one. 0: no limit.",
    )
    protocol: str = _opt(
        "auto",
        "How a closed-form head's regularisation is chosen and scored: holdout (on the validation "
        "split), cross-validation (k-fold on the training data, which then takes the validation split "
        "in too; the validation scores are out-of-fold), or auto (cross-validation when the validation "
        "split would be tiny and was split off the training data; see docs/auto.md).",
    )
    pooling: str = _opt("mean", "How token states become one vector: cls, mean, max or last.")
    layers: list[int | str] | None = _opt(
        None,
        "Hidden layers to pool (-1 = top, 0 = embeddings), or 'all' for ELMo's learned mix of "
        "every layer. Default: the last four for feature-extraction, the top one for finetune.",
    )
    layer_mix: str | None = _opt(
        None, "How pooled layers combine: concat, or scalar (learned mix). Default: scalar for 'all'."
    )
    unfreeze_layers: int | None = _opt(
        None,
        "Train just the top K layers (default: all): finetune and contrastive train them (and the head); "
        "lora, loha and ia3 put their adapter in them only. The frozen layers below run once per "
        "example (--activation_cache).",
    )
    body_lr_scale: float = _opt(0.1, "Body learning rate = learning_rate x this (the 1/10 rule).")
    head_dropout: float = _opt(0.1, "Dropout before the linear head.")
    head: str | None = _opt(
        None,
        "Classifier on the pooled features: linear (trained by gradient), logistic-cv (scikit-learn "
        "logistic regression, regularisation chosen by cross-validation, on frozen features; one-vs-rest "
        "for multi-label), ridge-cv (regression: ridge, penalty chosen by cross-validation), or auto. "
        "Default (auto): the task's closed-form head on a frozen body when no --epochs, --learning_rate "
        "or --early_stopping_patience asks for gradient training; linear otherwise (logistic-cv for "
        "contrastive).",
    )
    layer_lr_decay: float | None = _opt(
        None,
        "Layer-wise LR decay: a body layer d layers below the top trains at body LR x this^d "
        "(layerwise-lr-decay and gradual-unfreezing; default 0.9 there, 1.0 elsewhere).",
    )
    reinit_layers: int = _opt(
        0, "Re-initialise the top K body layers before training (few-sample stability; Zhang et al. 2021)."
    )
    contrastive_iterations: int = _opt(
        20, "contrastive: pairs per training example and iteration, as SetFit's num_iterations."
    )
    max_pairs: int = _opt(20_000, "contrastive: at most this many sentence pairs, however large the data.")
    pair_sampling: str = _opt(
        "in-batch",
        "contrastive: which pairs train the body. in-batch: every pair within each batch of examples "
        "(one forward pass scores B(B-1)/2 pairs); oversampling: SetFit 1.x's default, every pair once "
        "with the rarer kind repeated, batches of pairs; iterations: SetFit 0.x's, "
        "--contrastive_iterations pairs of each kind per example.",
    )
    pair_batch_size: int = _opt(
        16,
        "contrastive with in-batch pairs: examples per optimizer step, every pair among them trained "
        "(16: 120 pairs). --batch_size sets the other phases' batches.",
    )
    end_to_end: bool = _opt(
        False,
        "contrastive: after the pair phase, fit a linear head on the tuned body, then train head and "
        "body together on the labels (SetFit's differentiable head with end_to_end=True).",
    )
    trust_remote_code: bool = _opt(
        False,
        "Run code that is not nlptransfer's: a model's own code (auto_map, from the hub or its folder) "
        "and --metrics that are not built in (evaluate.load runs their script). Off: never.",
    )
    from_scratch: bool = _opt(
        False,
        "Build --model's architecture with random weights instead of its pretrained ones: the "
        "baseline that shows what transfer gains.",
    )
    # Images (--model an image backbone; data with an --image_column or a folder of class folders)
    augment: list[str] = _opt(
        [],
        "Image augmentation while the body trains: any of hflip, affine (rotate/scale/shift), color. "
        "Frozen-body phases train on features of the unaugmented images.",
    )
    batchnorm: str = _opt(
        "frozen-eval",
        "BatchNorm in image bodies: frozen-eval (frozen layers keep their running statistics), eval "
        "(every BatchNorm in inference mode, Keras' advice for fine-tuning), or train (all update).",
    )
    max_length: int = _opt(
        128, "Truncate token sequences to this length (the window size with --long_text chunk)."
    )
    long_text: str | None = _opt(
        None,
        "Texts longer than --max_length: truncate (keep their start), or chunk (read them whole in "
        "overlapping windows of --max_length tokens, pooled into one representation per text). "
        "Default: chunk when at least a fifth of the training texts are longer (single texts on a "
        "Hugging Face text model), truncate otherwise.",
    )
    chunk_stride: int | None = _opt(
        None, "--long_text chunk: tokens consecutive windows share (default: a quarter of --max_length)."
    )
    chunk_pooling: str = _opt("mean", "--long_text chunk: how a text's windows combine: mean or max.")
    pair_encoding: str | None = _opt(
        None,
        "Text pairs (--text_pair_column): joint (one sequence, as a cross-encoder reads them) or separate "
        "(each text encoded alone, then [u, v, |u-v|, u*v], as sentence-transformers' bi-encoders). "
        "Default: separate when the body stays frozen, joint when it trains.",
    )
    metric_for_best_model: str | None = _opt(
        None,
        "Validation metric that picks the best epoch. Default: accuracy (f1_macro when the classes are "
        "imbalanced), f1_micro for multi-label, spearman for regression.",
    )
    early_stopping_patience: int | None = _opt(
        None, "Stop after this many epochs without improvement (default: strategy's)."
    )
    metrics: list[str] | None = _opt(
        None,
        "Metrics to report. Built in: accuracy, f1_macro, precision_macro, recall_macro (single-label, "
        "the default); f1_micro, f1_macro, f1_samples, subset_accuracy, hamming_loss (multi-label); "
        "mse, mae, pearson, spearman, r2 (regression). Any other name is an evaluate module whose "
        "script runs, so it needs --trust_remote_code.",
    )
    class_weight: str = _opt(
        "auto",
        "Weigh classes in the loss, the logistic-cv head and the contrastive pairs: balanced (each class "
        "counts as much in total), none, or auto (balanced when the largest class has at least 3x the "
        "examples of the smallest; single-label classification only).",
    )
    regression_loss: str = _opt("mse", "Regression loss on the standardised targets: mse, or huber.")
    calibration: str = _opt(
        "temperature",
        "Calibrate classification probabilities after training: temperature (one temperature fitted on "
        "the validation split, or the out-of-fold outputs; one per label for multi-label; saved with "
        "the model, applied by predict and the ONNX export; results.json reports the expected "
        "calibration error before and after, reliability.png draws it) or none.",
    )
    cache_dir: str | None = _opt(
        None,
        "Folder of the frozen-body feature cache "
        "(default: $NLPTRANSFER_CACHE_DIR, else ~/.cache/nlptransfer/features).",
    )
    feature_cache: bool = _opt(
        True, "Reuse frozen-body features from earlier runs (--no-feature_cache: always recompute)."
    )
    activation_cache: bool = _opt(
        True,
        "Partial fine-tuning (embeddings and bottom blocks frozen, e.g. --unfreeze_layers 2): compute "
        "what enters the first trainable block once per example, keep it on disk beside the feature "
        "cache (memory-mapped, reused by later runs) and train the top blocks on it. The frozen bottom "
        "runs without dropout either way, so --no-activation_cache (the whole body every batch) gives "
        "the same results, slower.",
    )
    activation_cache_max_gb: float = _opt(
        4.0,
        "The most the activation cache may hold for one run (float32, every split; held in memory while "
        "it is computed); past it the run says so and runs uncached.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # every section's own checks
        self._check_range("body_lr_scale", 0.0, 1e3)
        self._check_range("head_dropout", 0.0, 0.99)
        self._check_range("activation_cache_max_gb", 0.0, 1e6)
        self._check_positive(("max_length",))
        self._check_positive(("early_stopping_patience",), optional=True)
        if self.head == "auto":
            self.head = None
        if self.head is not None and self.head not in HEAD_TYPES:
            raise ConfigError(f"--head must be auto or one of {', '.join(HEAD_TYPES)}, got '{self.head}'.")
        if self.time_budget_minutes is not None and self.time_budget_minutes < 0:
            raise ConfigError(
                f"--time_budget_minutes must be >= 0 (0: no limit), got {self.time_budget_minutes}."
            )
        self._check_choice("protocol", PROTOCOLS)
        if self.layer_lr_decay is not None:
            self._check_range("layer_lr_decay", 1e-3, 1.0)
        for name in ("reinit_layers",):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}.")
        self._check_positive(("contrastive_iterations", "max_pairs", "pair_batch_size"))
        self._check_choice("pair_sampling", PAIR_SAMPLING)
        if self.unfreeze_layers is not None and self.unfreeze_layers < 0:
            raise ConfigError(f"--unfreeze_layers must be >= 0, got {self.unfreeze_layers}.")
        self._check_layers()
        self._check_choice("class_weight", CLASS_WEIGHTS)
        self._check_choice("regression_loss", ("mse", "huber"))
        self._check_choice("calibration", CALIBRATIONS)
        if self.long_text is not None:
            self._check_choice("long_text", ("truncate", "chunk"))
        self._check_choice("chunk_pooling", ("mean", "max"))
        if self.pair_encoding is not None:
            self._check_choice("pair_encoding", ("joint", "separate"))
        if self.pair_encoding == "separate" and not self.text_pair_column:
            raise ConfigError("--pair_encoding separate encodes text pairs: give --text_pair_column too.")
        if self.chunk_stride is not None and self.long_text == "truncate":
            raise ConfigError(
                "--chunk_stride applies to --long_text chunk; drop --long_text truncate or --chunk_stride."
            )
        if self.metrics is not None and self.metric_for_best_model not in (None, *self.metrics):
            raise ConfigError(
                f"--metric_for_best_model '{self.metric_for_best_model}' is not among --metrics "
                f"({', '.join(self.metrics)}); add it to --metrics or pick one of those."
            )

    def run_config(self) -> FinetuneConfig:
        """The training options alone (of a command's config that adds its own to them)."""
        return FinetuneConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(FinetuneConfig)})

    @property
    def time_budget_seconds(self) -> float | None:
        """The time budget in seconds; None when there is none."""
        return self.time_budget_minutes * 60 if self.time_budget_minutes else None

    @property
    def data(self) -> DataOptions:
        return DataOptions.of(self)

    @property
    def adapter(self) -> AdapterOptions:
        return AdapterOptions.of(self)

    @property
    def vocabulary(self) -> VocabularyOptions:
        return VocabularyOptions.of(self)

    def _check_layers(self) -> None:
        if self.layer_mix is not None and self.layer_mix not in ("concat", "scalar"):
            raise ConfigError(f"--layer_mix must be concat or scalar, got '{self.layer_mix}'.")
        if not self.layers or self.layers == ["all"]:
            return
        try:
            self.layers = [int(i) for i in self.layers]
        except ValueError as err:
            raise ConfigError(
                f"--layers takes layer indices such as -1 or '-4 -3 -2 -1', or 'all'; got {self.layers}."
            ) from err


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(element type, is_list) of an annotation such as ``int | None`` or ``list[str]``.

    A list of a union (``list[int | str]``) parses as strings; the dataclass converts.
    """
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is list:
        element = typing.get_args(annotation)[0]
        return (str if typing.get_origin(element) in (typing.Union, types.UnionType) else element), True
    return annotation, False


def build_parser(cls: type[C], description: str = "") -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag`` per dataclass field, plus ``--config FILE.yaml``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--config", help="YAML file of options; flags given on the command line win.")
    hints = typing.get_type_hints(cls)
    groups = _section_groups(parser, cls)
    order = list(groups)  # the config's own options first, then section by section
    for f in sorted(dataclasses.fields(cls), key=lambda f: order.index(f.name)):
        kind, is_list = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        group = groups[f.name]
        if kind is bool:
            group.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, help=help_text)
        else:
            group.add_argument(f"--{f.name}", type=kind, nargs="+" if is_list else None, help=help_text)
    parser.set_defaults(**{f.name: None for f in dataclasses.fields(cls)})
    return parser


def _section_groups(parser: argparse.ArgumentParser, cls: type) -> dict[str, Any]:
    """field name -> the --help group of the section that declares it (the config's own fields first)."""
    groups: dict[str, Any] = {}
    for klass in cls.__mro__:
        own = [name for name in vars(klass).get("__annotations__", {}) if name not in groups]
        if not own or not dataclasses.is_dataclass(klass):
            continue
        title = (klass.__doc__ or klass.__name__).strip().splitlines()[0]
        group = parser.add_argument_group(klass.__name__, title)
        groups.update(dict.fromkeys(own, group))
    return groups


def load_yaml_options(path: str, cls: type[C]) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"Config file '{path}' does not exist.")
    try:
        options = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"Config file '{path}' is not valid YAML: {err}") from err
    if not isinstance(options, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping of option: value.")
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in options:
        if key not in valid:
            raise ConfigError(f"Unknown option '{key}' in {path}." + closest_hint(key, valid))
    hints = typing.get_type_hints(cls)
    return {key: _coerce_yaml(key, value, hints[key], path) for key, value in options.items()}


def _coerce_yaml(key: str, value: Any, annotation: Any, path: str) -> Any:
    """Convert a YAML value as the CLI flag would: PyYAML reads ``2e-5`` as a string."""
    if value is None:
        return None
    kind, is_list = _base_type(annotation)
    if is_list:
        return [_coerce_yaml(key, v, kind, path) for v in (value if isinstance(value, list) else [value])]
    if kind in (int, float) and not isinstance(value, bool):
        try:
            converted = kind(value)
        except (TypeError, ValueError):
            converted = None
        if converted is not None and (kind is float or converted == float(value)):
            return converted
    elif kind is bool and isinstance(value, bool):
        return value
    elif kind is str and isinstance(value, str | int | float):
        return str(value)
    raise ConfigError(f"Option '{key}' in {path} must be {kind.__name__}, got {value!r}.")


def parse_config(cls: type[C], argv: Sequence[str] | None = None, description: str = "") -> C:
    """Defaults < YAML file (``--config``) < command-line flags."""
    args = vars(build_parser(cls, description).parse_args(argv))
    options = load_yaml_options(args.pop("config"), cls) if args.get("config") else {}
    args.pop("config", None)
    options.update({k: v for k, v in args.items() if v is not None})
    try:
        return cls(**options)
    except TypeError as err:
        raise ConfigError(str(err)) from err
