"""Domain-adaptive pretraining: continue a model's own objective on unlabelled in-domain text.

Masked-LM for encoders (BERT, RoBERTa, MiniLM...), causal-LM for decoders
(GPT-2, Llama, SmolLM2...), span corruption for T5-style encoder-decoders. The
output folder is a plain Hugging Face model folder: pass it as ``--model`` to
``recipes/finetune.py``. Held-out loss and perplexity are reported before and after.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, Dataset

from nlptransfer.backbones import is_word_vector_source
from nlptransfer.config import TrainingOptions, _opt
from nlptransfer.data import BUILTIN_DATASETS, LengthGroupedSampler, read_texts
from nlptransfer.errors import ConfigError, DataError, ModelLoadError, SaveError, write_errors
from nlptransfer.engine.loop import EpochPlan, TrainSession, prepare_phase, run_epochs
from nlptransfer.runs.modelcard import CardInfo, command_line, push_to_hub, run_details, write_card
from nlptransfer.runs.outputs import (
    RESULTS_NAME,
    RUN_CONFIG_NAME,
    check_output_dir,
    hardware,
    resource_usage,
    source_commit,
    versions,
)
from nlptransfer.engine.session import finish_session, start_session

logger = logging.getLogger(__name__)

OBJECTIVES = ("mlm", "clm", "span")
_PIPELINE_TAGS = {"mlm": "fill-mask", "clm": "text-generation", "span": "text2text-generation"}
# Example i of epoch e is masked with the seed (seed, e, i): the same masks on any
# number of processes and after a resume; the held-out set always uses epoch -1.
_HELDOUT_EPOCH = -1


@dataclass
class PretrainConfig(TrainingOptions):
    """Everything one run of ``recipes/pretrain.py`` needs. Every field is a CLI flag."""

    model: str = _opt("minilm", "Short name (minilm, smollm2), local folder or hub id of the model to adapt.")
    objective: str | None = _opt(
        None,
        "mlm (masked-LM), clm (causal-LM) or span (T5 span corruption). Default: mlm for encoders, "
        "span for encoder-decoders, clm for decoders.",
    )
    dataset: str = _opt(
        "movie-reviews", "Built-in dataset whose training texts are used without --train_file."
    )
    train_file: str | None = _opt(
        None, "Unlabelled text: a .txt file (one text per line), a CSV/JSON/parquet file or a saved dataset."
    )
    text_column: str = _opt("text", "Column holding the text (tables only).")
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
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES)}, got '{self.objective}'.")
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


class TokenDataset(Dataset):
    def __init__(self, ids: list[list[int]]) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids[i], "idx": i}


class _Collator:
    """Pads, and draws each example's noise from (seed, epoch, example index)."""

    def __init__(self, tokenizer: Any, seed: int) -> None:
        self.tokenizer = tokenizer
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def generator(self, idx: int) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.seed, self.epoch, idx)) & 0x7FFF_FFFF_FFFF)

    def pad(self, rows: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


class MLMCollator(_Collator):
    """BERT's masking: of the chosen tokens, 80% become [MASK], 10% a random token, 10% stay."""

    def __init__(self, tokenizer: Any, seed: int, probability: float) -> None:
        super().__init__(tokenizer, seed)
        if tokenizer.mask_token_id is None:
            raise ModelLoadError("Masked-LM needs a tokenizer with a mask token; use --objective clm.")
        self.probability = probability
        self.special = set(tokenizer.all_special_ids)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        inputs, labels = [], []
        for item in items:
            ids, target = self._mask(item["input_ids"], self.generator(item["idx"]))
            inputs.append(ids)
            labels.append(target)
        input_ids = self.pad(inputs, self.tokenizer.pad_token_id)
        attention = self.pad([[1] * len(r) for r in inputs], 0)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": self.pad(labels, -100)}

    def _mask(self, ids: list[int], generator: torch.Generator) -> tuple[list[int], list[int]]:
        tokens = torch.tensor(ids)
        candidates = torch.tensor([i not in self.special for i in ids])
        chosen = (torch.rand(len(ids), generator=generator) < self.probability) & candidates
        if not chosen.any() and candidates.any():  # every text teaches something
            chosen[torch.nonzero(candidates)[0]] = True
        roll = torch.rand(len(ids), generator=generator)
        random_ids = torch.randint(len(self.tokenizer), (len(ids),), generator=generator)
        masked = tokens.clone()
        masked[chosen & (roll < 0.8)] = self.tokenizer.mask_token_id
        swap = chosen & (roll >= 0.8) & (roll < 0.9)
        masked[swap] = random_ids[swap]
        labels = torch.where(chosen, tokens, torch.full_like(tokens, -100))
        return masked.tolist(), labels.tolist()


class CLMCollator(_Collator):
    """Next-token prediction; padding (which may be the EOS token) is never a target."""

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [item["input_ids"] for item in items]
        input_ids = self.pad(rows, self.tokenizer.pad_token_id)
        attention = self.pad([[1] * len(r) for r in rows], 0)
        labels = input_ids.masked_fill(attention == 0, -100)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


class SpanCollator(_Collator):
    """T5's span corruption: noise spans become sentinels in the input; the target spells them out."""

    def __init__(self, tokenizer: Any, seed: int, density: float, mean_span: float) -> None:
        super().__init__(tokenizer, seed)
        self.sentinels = _sentinel_ids(tokenizer)
        self.density, self.mean_span = density, mean_span
        self.eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pairs = [self._corrupt(item["input_ids"], self.generator(item["idx"])) for item in items]
        inputs = [p[0] for p in pairs]
        input_ids = self.pad(inputs, self.tokenizer.pad_token_id)
        attention = self.pad([[1] * len(r) for r in inputs], 0)
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": self.pad([p[1] for p in pairs], -100),
        }

    def _corrupt(self, ids: list[int], generator: torch.Generator) -> tuple[list[int], list[int]]:
        body = ids[:-1] if ids and ids[-1] == self.eos else list(ids)
        n = len(body)
        noise = min(max(1, round(n * self.density)), max(n - 1, 1))
        spans = min(max(1, round(noise / self.mean_span)), len(self.sentinels), max(n - noise, 1))
        mask = _span_mask(n, noise, spans, generator)
        source, target, span = [], [], -1
        for token, is_noise in zip(body, mask, strict=True):
            if is_noise:
                if span < 0 or not source or source[-1] != self.sentinels[span]:
                    span += 1
                    source.append(self.sentinels[span])
                    target.append(self.sentinels[span])
                target.append(token)
            else:
                source.append(token)
        return [*source, self.eos], [*target, self.eos]


def _span_mask(n: int, noise: int, spans: int, generator: torch.Generator) -> list[bool]:
    """Interleave ``spans`` noise segments with ``spans`` kept segments, lengths drawn at random."""
    noise_lengths = _segments(noise, spans, generator)
    kept_lengths = _segments(n - noise, spans, generator) if n > noise else [0] * spans
    mask: list[bool] = []
    for kept, noisy in zip(kept_lengths, noise_lengths, strict=True):
        mask += [False] * kept + [True] * noisy
    return mask[:n] + [False] * (n - len(mask))


def _segments(total: int, count: int, generator: torch.Generator) -> list[int]:
    """``count`` lengths summing to ``total``, each at least 1 when ``total >= count``."""
    if total < count:
        return _even(total, count)
    cuts = sorted((torch.randperm(total - 1, generator=generator)[: count - 1] + 1).tolist())
    bounds = [0, *cuts, total]
    return [b - a for a, b in itertools.pairwise(bounds)]


def _even(total: int, count: int) -> list[int]:
    return [total // count + (1 if i < total % count else 0) for i in range(count)]


def _sentinel_ids(tokenizer: Any) -> list[int]:
    ids = []
    for i in range(100):
        token = f"<extra_id_{i}>"
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            break
        ids.append(token_id)
    if not ids:
        raise ModelLoadError(
            "Span corruption needs T5's sentinel tokens (<extra_id_0>, ...) in the tokenizer; this one has "
            "none. Use a T5 tokenizer, or --objective clm."
        )
    return ids


class _Epochs:
    """Sets the epoch on the sampler and the collator together (fresh order, fresh masks)."""

    def __init__(self, *targets: Any) -> None:
        self.targets = targets

    def set_epoch(self, epoch: int) -> None:
        for target in self.targets:
            target.set_epoch(epoch)


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


def build_collator(objective: str, tokenizer: Any, config: PretrainConfig) -> _Collator:
    if objective == "mlm":
        return MLMCollator(tokenizer, config.seed, config.mlm_probability)
    if objective == "span":
        return SpanCollator(tokenizer, config.seed, config.noise_density, config.mean_span_length)
    return CLMCollator(tokenizer, config.seed)


@torch.no_grad()
def heldout_loss(
    model: torch.nn.Module, dataset: TokenDataset, collator: _Collator, batch_size: int
) -> float:
    """Mean loss per predicted token over the held-out texts, with fixed masks (epoch -1).

    Every process computes it on all held-out texts: the number is exact and the
    same everywhere, and the held-out set is small.
    """
    was_training = model.training
    model.eval()
    collator.set_epoch(_HELDOUT_EPOCH)
    total, count = 0.0, 0
    device = next(model.parameters()).device
    causal = isinstance(collator, CLMCollator)
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = model(**batch).loss
        labels = batch["labels"]
        # Causal LMs shift labels inside the model: the first position is never predicted.
        targets = int((labels[:, 1:] != -100).sum()) if causal else int((labels != -100).sum())
        total, count = total + float(loss) * targets, count + targets
    model.train(was_training)
    return total / max(count, 1)


# ---------------------------------------------------------------- run


def resolve_output_dir(config: PretrainConfig) -> Path:
    if config.output_dir:
        return Path(config.output_dir)
    data = Path(config.train_file).stem if config.train_file else config.dataset
    return Path("runs") / f"{Path(config.model.rstrip('/')).name}-adapted-{data}"


def pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Continue pretraining as configured; save the adapted model and return the results dict."""
    run_start = time.time()  # this run alone; results.json's wall_seconds counts from the process start
    output_dir = resolve_output_dir(config)
    if not config.resume_from_checkpoint:
        check_output_dir(output_dir, config.overwrite_output_dir)
    texts = load_texts(config)
    set_seed(config.seed)  # a head the checkpoint lacks (MiniLM has no MLM head) is drawn at load
    model, tokenizer, objective = load_lm(config)
    collator = build_collator(objective, tokenizer, config)
    session = start_session(config, output_dir, "nlptransfer-pretrain")
    train_texts, heldout_texts = split_heldout(texts, config.heldout_split, config.seed)
    length = _max_length(config.max_length, model, tokenizer)
    train, heldout = (
        TokenDataset(tokenizer(part, truncation=True, max_length=length)["input_ids"])
        for part in (train_texts, heldout_texts)
    )
    logger.info("%s on %d texts (%d held out) with %s", objective, len(train), len(heldout), config.model)
    device = session.accelerator.device
    model.to(device)
    state = _resume_state(session) or {
        "history": [],
        "loss_before": heldout_loss(model, heldout, collator, config.eval_batch_size),
    }
    logger.info("held-out %s loss before: %.4f", objective, state["loss_before"])
    session.snapshot = lambda: ({**state, "config": config.to_dict()}, {}, {})
    start = time.perf_counter()
    _train(session, model, train, heldout, collator, config, state)
    seconds = time.perf_counter() - start
    results = _results(config, objective, state, len(train), len(heldout), seconds)
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


def _resume_state(session: TrainSession) -> dict[str, Any] | None:
    if session.resume is None:
        return None
    saved = dict(session.resume.state)
    saved.pop("config", None)
    return saved


def _train(
    session: TrainSession, model: torch.nn.Module, train: TokenDataset, heldout: TokenDataset,
    collator: _Collator, config: PretrainConfig, state: dict[str, Any],
) -> None:  # fmt: skip
    epochs = config.epochs or 1
    lr = config.learning_rate or 5e-5
    sampler = LengthGroupedSampler([len(ids) for ids in train.ids], config.batch_size, config.seed)
    loader = DataLoader(
        train, batch_size=config.batch_size, sampler=sampler, collate_fn=collator,
        generator=torch.Generator().manual_seed(config.seed),
    )  # fmt: skip
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "lr": lr, "weight_decay": config.weight_decay},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0},
    ]
    prepared, optimizer, loader, scheduler = prepare_phase(session, model, groups, loader, epochs)
    unwrapped = session.accelerator.unwrap_model(prepared)

    def end_epoch(train_loss: float) -> bool:
        loss = heldout_loss(unwrapped, heldout, collator, config.eval_batch_size)
        state["history"].append(
            {"epoch": len(state["history"]) + 1, "train_loss": train_loss, "heldout_loss": loss}
        )
        logger.info("epoch %d: train_loss=%.4f held-out loss=%.4f", len(state["history"]), train_loss, loss)
        session.log(
            {"train/epoch_loss": train_loss, "validation/loss": loss, "validation/perplexity": _ppl(loss)}
        )
        return False

    plan = EpochPlan(prepared, loader, _Epochs(sampler, collator), optimizer, scheduler, epochs,
                     lambda m, b: m(**b).loss, end_epoch, "pretrain epoch")  # fmt: skip
    with session.guard:
        run_epochs(session, plan)


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def _results(
    config: PretrainConfig,
    objective: str,
    state: dict[str, Any],
    n_train: int,
    n_heldout: int,
    seconds: float,
) -> dict[str, Any]:
    before = state["loss_before"]
    after = state["history"][-1]["heldout_loss"] if state["history"] else before
    return {
        "model": config.model,
        "objective": objective,
        "heldout_loss_before": before,
        "heldout_loss_after": after,
        "heldout_perplexity_before": _ppl(before),
        "heldout_perplexity_after": _ppl(after),
        "history": state["history"],
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
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out, prefix=".saving-", ignore_cleanup_errors=True) as tmp:
            staging = Path(tmp)
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            config.save(staging / RUN_CONFIG_NAME)
            write_card(staging, _card(config, results, out))
            (staging / RESULTS_NAME).write_text(json.dumps(results, indent=2))
            (out / RESULTS_NAME).unlink(missing_ok=True)  # from here on the old run is not complete
            # results.json last: its presence means the run completed.
            for file in sorted(staging.iterdir(), key=lambda f: f.name == RESULTS_NAME):
                os.replace(file, out / file.name)
    except write_errors() as err:
        raise SaveError(
            f"Could not save the pretrained model to {out}: {err} (disk full?). Nothing there was "
            "replaced: an earlier run in that folder is unchanged."
        ) from err


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
    return CardInfo(
        title=out.name,
        summary=f"`{config.model}` adapted to {data} by continued pretraining ({objective}) with "
        "[nlptransfer](https://github.com/nlptransfer/nlptransfer): domain-adaptive pretraining, the "
        "first step of transfer to a new domain before fine-tuning.",
        base_model=config.model,
        pipeline_tag=_PIPELINE_TAGS[objective],
        results=results_table,
        details={
            "Objective": objective,
            "Data": f"{data}: {results['num_train_texts']} texts for training, "
            f"{results['num_heldout_texts']} held out",
            "Epochs": len(results["history"]),
            "Optimisation": f"AdamW, lr {config.learning_rate or 5e-5:g}, batch size {config.batch_size}, "
            f"{config.lr_scheduler} schedule, warmup {config.warmup:g}, seed {config.seed}",
            "Training time": f"{results['train_seconds']:.0f} s",
            **run_details(results),
        },
        command=command_line(config, "recipes/pretrain.py"),
        usage=usage,
        tags=["domain-adaptation", objective],
        versions=results["versions"],
    )


__all__ = ["PretrainConfig", "default_objective", "heldout_loss", "pretrain"]
