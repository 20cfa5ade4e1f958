"""Domain-adaptive pretraining: continue a model's own objective on unlabelled in-domain text.

Masked-LM for encoders (BERT, RoBERTa, MiniLM...), causal-LM for decoders
(GPT-2, Llama, SmolLM2...), span corruption for T5-style encoder-decoders. The
output folder is a plain Hugging Face model folder: pass it as ``--model`` to
``recipes/finetune.py``. Held-out loss and perplexity are reported before and after.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from nlptransfer.backbones import is_word_vector_source
from nlptransfer.config import TextSource, TrainingOptions, _opt
from nlptransfer.data import BUILTIN_DATASETS, read_texts
from nlptransfer.engine.checkpoint import Checkpoint, Snapshot
from nlptransfer.engine.loop import TrainSession, run_phase
from nlptransfer.engine.objectives import OBJECTIVES
from nlptransfer.engine.objectives.language_model import LANGUAGE_MODELING, LanguageModeling, TokenDataset
from nlptransfer.engine.session import finish_session, start_session
from nlptransfer.errors import ConfigError, DataError
from nlptransfer.files import replace_files
from nlptransfer.runs.modelcard import CardInfo, build_card, push_to_hub, write_card
from nlptransfer.runs.outputs import (
    RESULTS_NAME,
    RUN_CONFIG_NAME,
    check_output_dir,
    hardware,
    resolve_output_dir,
    resource_usage,
    source_commit,
    versions,
)
from nlptransfer.strategies.base import param_groups

logger = logging.getLogger(__name__)

_PIPELINE_TAGS = {"mlm": "fill-mask", "clm": "text-generation", "span": "text2text-generation"}


@dataclass
class PretrainConfig(TrainingOptions, TextSource):
    """Everything one run of ``recipes/pretrain.py`` needs. Every field is a CLI flag.

    The texts come from the same ``TextSource`` section as fine-tuning's data (a built-in
    dataset's training texts, or --train_file; unlabelled, so any table needs only its text).
    """

    model: str = _opt("minilm", "Short name (minilm, smollm2), local folder or hub id of the model to adapt.")
    objective: str | None = _opt(
        None,
        "mlm (masked-LM), clm (causal-LM) or span (T5 span corruption). Default: mlm for encoders, "
        "span for encoder-decoders, clm for decoders.",
    )
    heldout_split: float = _opt(0.05, "Fraction of the texts held out to measure the loss before and after.")
    max_train_texts: int | None = _opt(None, "Use only this many texts (quick runs).")
    max_length: int = _opt(128, "Truncate texts to this many tokens.")
    mlm_probability: float = _opt(
        0.15, "mlm: fraction of tokens to predict (80% [MASK], 10% random, 10% kept)."
    )
    noise_density: float = _opt(0.15, "span: fraction of tokens corrupted.")
    mean_span_length: float = _opt(3.0, "span: mean length of a corrupted span.")
    trust_remote_code: bool = _opt(False, "Allow model code from the hub (off: never run foreign code).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective is not None and self.objective not in LANGUAGE_MODELING:
            raise ConfigError(
                f"--objective must be one of {', '.join(LANGUAGE_MODELING)}, got '{self.objective}'."
            )
        for name in ("heldout_split", "mlm_probability", "noise_density"):
            self._check_range(name, 0.01, 0.9)
        if self.mean_span_length < 1:
            raise ConfigError(f"--mean_span_length must be at least 1, got {self.mean_span_length}.")
        for name in ("max_length", "max_train_texts"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ConfigError(f"--{name} must be at least 2, got {value}.")


# ---------------------------------------------------------------- data


def load_texts(config: PretrainConfig) -> list[str]:
    if config.train_file:
        texts = read_texts(config.train_file, config.text_column)
    else:
        # Only the training split: the downstream validation and test texts stay unseen.
        texts = BUILTIN_DATASETS.get(config.dataset)()["train"]["text"].astype(str).tolist()
    if config.max_train_texts:
        texts = texts[: config.max_train_texts]
    if len(texts) < 2:
        raise DataError(f"Pretraining needs at least 2 non-empty texts; found {len(texts)}.")
    return texts


def split_heldout(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n = min(max(1, round(len(texts) * fraction)), len(texts) - 1)  # keep a text to train on
    return [texts[i] for i in order[n:]], [texts[i] for i in order[:n]]


# ---------------------------------------------------------------- model


def default_objective(hf_config: Any) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(hf_config, "is_encoder_decoder", False):
        return "span"
    if hf_config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(
        hf_config, "is_decoder", False
    ):
        return "mlm"
    return "clm"


def load_lm(config: PretrainConfig) -> tuple[torch.nn.Module, Any, str]:
    """The model with its language-model head, its tokenizer, and the objective to train."""
    import transformers

    from nlptransfer.backbones.hf_text import load_hf_model

    if is_word_vector_source(config.model) or config.model.startswith("elmo:"):
        raise ConfigError(
            "recipes/pretrain.py continues pretraining transformer models. For word vectors, train your "
            "own on your text with `nlptransfer train-vectors`."
        )
    hf_config = _load_config(config)
    objective = config.objective or default_objective(hf_config)
    auto = {
        "mlm": transformers.AutoModelForMaskedLM,
        "clm": transformers.AutoModelForCausalLM,
        "span": transformers.AutoModelForSeq2SeqLM,
    }[objective]
    if type(hf_config) not in auto._model_mapping and not config.trust_remote_code:
        valid = [o for o in OBJECTIVES if o == default_objective(hf_config)]
        raise ConfigError(
            f"'{config.model}' ({hf_config.model_type}) has no {objective} head in transformers; "
            f"use --objective {valid[0]}."
        )
    model, tokenizer, _ = load_hf_model(config.model, config.trust_remote_code, auto)
    if type(getattr(model, "hf_quantizer", None)).__name__ == "GgufHfQuantizer":
        # GGUF weights are dequantised to float32 at load: from here on it is a plain
        # model, and its output folder must save (and later load) as one.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    return model, tokenizer, objective


def _load_config(config: PretrainConfig) -> Any:
    from transformers import AutoConfig

    from nlptransfer.backbones.sources import resolve_model, unknown_model_error

    resolved = resolve_model(config.model)
    try:
        return AutoConfig.from_pretrained(
            resolved.path, trust_remote_code=config.trust_remote_code, **resolved.load_kwargs()
        )
    except (OSError, ValueError) as err:
        raise unknown_model_error(config.model, err) from err


def _max_length(requested: int, model: torch.nn.Module, tokenizer: Any) -> int:
    from nlptransfer.backbones.hf_text import max_positions

    limit = max_positions(model.config, tokenizer)
    if limit is not None and requested > limit:
        logger.warning("--max_length %d exceeds what the model accepts; using %d.", requested, limit)
        return limit
    return requested


# ---------------------------------------------------------------- run


def pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Continue pretraining as configured; save the adapted model and return the results dict."""
    run_start = time.time()  # this run alone; results.json's wall_seconds counts from the process start
    output_dir = resolve_output_dir(config, "{model}-adapted-{data}")
    if not config.resume_from_checkpoint:
        check_output_dir(output_dir, config.overwrite_output_dir)
    texts = load_texts(config)
    set_seed(config.seed)  # a head the checkpoint lacks (MiniLM has no MLM head) is drawn at load
    model, tokenizer, name = load_lm(config)
    train, heldout = _token_splits(texts, model, tokenizer, config)
    objective = build_objective(name, tokenizer, train, config)
    session = start_session(config, output_dir, "nlptransfer-pretrain")
    logger.info("%s on %d texts (%d held out) with %s", name, len(train), len(heldout), config.model)
    model.to(session.accelerator.device)
    state = PretrainState(config)
    session.register_for_checkpointing(state)
    if state.loss_before is None:
        state.loss_before = objective.heldout_loss(model, heldout, config.eval_batch_size)
    logger.info("held-out %s loss before: %.4f", name, state.loss_before)
    start = time.perf_counter()
    hook = HeldoutLoss(session, model, objective, heldout, config.eval_batch_size, state)
    groups = param_groups(list(model.named_parameters()), config.learning_rate or 5e-5, config.weight_decay)
    with session.guard:
        run_phase(session, model, groups, objective, config.epochs or 1, hook)
    seconds = time.perf_counter() - start
    results = _results(config, name, state, len(train), len(heldout), seconds)
    finish_session(session, output_dir)
    if session.accelerator.is_main_process:
        # Measured last, just before saving (the save itself is the one step not counted).
        results.update(resource_usage(run_start))
        results["hardware"] = hardware()  # its load average at the end of the run
        _save(session.accelerator.unwrap_model(model), tokenizer, config, results, output_dir)
        if config.push_to_hub:
            push_to_hub(output_dir, config.hub_model_id)
    session.accelerator.wait_for_everyone()
    return results


def _token_splits(
    texts: list[str], model: torch.nn.Module, tokenizer: Any, config: PretrainConfig
) -> tuple[TokenDataset, TokenDataset]:
    train_texts, heldout_texts = split_heldout(texts, config.heldout_split, config.seed)
    length = _max_length(config.max_length, model, tokenizer)
    train, heldout = (
        TokenDataset(tokenizer(part, truncation=True, max_length=length)["input_ids"])
        for part in (train_texts, heldout_texts)
    )
    return train, heldout


def build_objective(
    name: str, tokenizer: Any, train: TokenDataset, config: PretrainConfig
) -> LanguageModeling:
    options = {
        "mlm": {"probability": config.mlm_probability},
        "span": {"density": config.noise_density, "mean_span": config.mean_span_length},
    }
    objective = OBJECTIVES.get(name)(
        tokenizer, train, config.batch_size, config.seed, **options.get(name, {})
    )
    assert isinstance(objective, LanguageModeling)
    return objective


@dataclass
class PretrainState:
    """What a pretraining checkpoint holds besides accelerate's state: the held-out losses so far."""

    config: PretrainConfig
    history: list[dict[str, float]] = field(default_factory=list)
    loss_before: float | None = None

    def state_dict(self) -> Snapshot:
        state = {"history": self.history, "loss_before": self.loss_before, "config": self.config.to_dict()}
        return Snapshot(state, {}, {})

    def load_state_dict(self, checkpoint: Checkpoint) -> None:
        self.history = list(checkpoint.state["history"])
        self.loss_before = checkpoint.state["loss_before"]


@dataclass
class HeldoutLoss:
    """The end of a pretraining epoch: the held-out loss, logged and kept in the history."""

    session: TrainSession
    model: torch.nn.Module
    objective: LanguageModeling
    heldout: TokenDataset
    batch_size: int
    state: PretrainState

    def on_epoch_end(self, train_loss: float) -> bool:
        loss = self.objective.heldout_loss(self.model, self.heldout, self.batch_size)
        history = self.state.history
        history.append({"epoch": len(history) + 1, "train_loss": train_loss, "heldout_loss": loss})
        logger.info("epoch %d: train_loss=%.4f held-out loss=%.4f", len(history), train_loss, loss)
        self.session.log(
            {"train/epoch_loss": train_loss, "validation/loss": loss, "validation/perplexity": _ppl(loss)}
        )
        return False  # no early stopping: every epoch runs


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def _results(
    config: PretrainConfig,
    objective: str,
    state: PretrainState,
    n_train: int,
    n_heldout: int,
    seconds: float,
) -> dict[str, Any]:
    before = state.loss_before
    assert before is not None  # measured before training
    after = state.history[-1]["heldout_loss"] if state.history else before
    return {
        "model": config.model,
        "objective": objective,
        "heldout_loss_before": before,
        "heldout_loss_after": after,
        "heldout_perplexity_before": _ppl(before),
        "heldout_perplexity_after": _ppl(after),
        "history": state.history,
        "num_train_texts": n_train,
        "num_heldout_texts": n_heldout,
        "train_seconds": round(seconds, 3),
        "seed": config.seed,
        "versions": versions(),
        "hardware": hardware(),
        "source": source_commit(),
        "config": config.to_dict(),
    }


def _save(
    model: torch.nn.Module, tokenizer: Any, config: PretrainConfig, results: dict[str, Any], out: Path
) -> None:
    """Write every file to a staging folder first: a full disk then leaves an earlier run intact."""
    kept = "an earlier run in that folder is unchanged."
    with replace_files(out, "the pretrained model", kept, markers=(RESULTS_NAME,)) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        config.save(staging / RUN_CONFIG_NAME)
        write_card(staging, _card(config, results, out))
        (staging / RESULTS_NAME).write_text(json.dumps(results, indent=2))


def _card(config: PretrainConfig, results: dict[str, Any], out: Path) -> CardInfo:
    objective = results["objective"]
    data = Path(config.train_file).name if config.train_file else f"{config.dataset} (training split)"
    results_table = {
        "held-out, before": {
            "loss": results["heldout_loss_before"],
            "perplexity": results["heldout_perplexity_before"],
        },
        "held-out, after": {
            "loss": results["heldout_loss_after"],
            "perplexity": results["heldout_perplexity_after"],
        },
    }
    usage = (
        "# classify with it: the folder is a valid --model\n"
        f"# accelerate launch recipes/finetune.py --model {out} --strategy finetune\n"
        "from transformers import AutoModel, AutoTokenizer\n\n"
        f'model = AutoModel.from_pretrained("{out.name}")  # this folder, or its hub id'
    )
    return build_card(
        config, results, out, "recipes/pretrain.py",
        summary=f"`{config.model}` adapted to {data} by continued pretraining ({objective}) with "
        "[nlptransfer](https://github.com/nlptransfer/nlptransfer): domain-adaptive pretraining, the "
        "first step of transfer to a new domain before fine-tuning.",
        pipeline_tag=_PIPELINE_TAGS[objective],
        details={
            "Objective": objective,
            "Data": f"{data}: {results['num_train_texts']} texts for training, "
            f"{results['num_heldout_texts']} held out",
            "Epochs": len(results["history"]),
            "Learning rate": f"{config.learning_rate or 5e-5:g}",
        },
        usage=usage, results=results_table, tags=["domain-adaptation", objective],
    )  # fmt: skip


__all__ = ["PretrainConfig", "default_objective", "pretrain"]
