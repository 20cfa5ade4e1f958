"""The training loop on accelerate: one CPU, one GPU, many GPUs or nodes."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from nlptransfer.config import FinetuneConfig
from nlptransfer.data import (
    Collator,
    EncodedDataset,
    FeatureDataset,
    LengthGroupedSampler,
    Split,
    TextClassificationData,
)
from nlptransfer.errors import NLPTransferError, OutputDirExistsError
from nlptransfer.metrics import compute_metrics
from nlptransfer.model import CONFIG_NAME, TransferModel
from nlptransfer.strategies import Strategy

logger = logging.getLogger(__name__)

RUN_MARKERS = ("results.json", "run_config.json", CONFIG_NAME)
RESULTS_NAME = "results.json"
TABLE_NAME = "trainable_layers.md"


class TrainingError(NLPTransferError, RuntimeError):
    """Training cannot go on (for example the loss became NaN)."""


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    validation: dict[str, float]


@dataclass
class FitResult:
    history: list[EpochLog] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = float("-inf")
    seen_indices: list[int] = field(default_factory=list)


def build_accelerator(config: FinetuneConfig) -> Accelerator:
    # Without cpu=True, a CPU-only `accelerate launch --multi_gpu` runs unsynchronised copies.
    accelerator = Accelerator(
        cpu=config.cpu or not torch.cuda.is_available(),
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
    )
    if accelerator.device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        set_cpu_threads(config.num_threads, local)
    return accelerator


def set_cpu_threads(requested: int | None, local_processes: int) -> None:
    """Use every core: `accelerate launch` pins one thread per process on CPU by default."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = requested or max(1, cores // max(local_processes, 1))
    torch.set_num_threads(threads)
    logger.debug("using %d CPU threads per process", threads)


def default_output_dir(config: FinetuneConfig) -> Path:
    data = Path(config.train_file).stem if config.train_file else config.dataset
    model = Path(config.model.rstrip("/")).name
    return Path("runs") / f"{data}-{model}-{config.strategy}"


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse a folder that holds another run (unless ``overwrite``) or unrelated files."""
    if not path.exists() or not any(path.iterdir()):
        return
    if not any((path / marker).exists() for marker in RUN_MARKERS):
        raise OutputDirExistsError(
            f"Output folder '{path}' is not empty and holds no earlier run; choose a new or empty "
            "--output_dir (nlptransfer never deletes files it did not write)."
        )
    if not overwrite:
        raise OutputDirExistsError(
            f"Output folder '{path}' already holds a run. Pass --overwrite_output_dir to replace "
            "it, or choose another --output_dir."
        )


def setup_logging(accelerator: Accelerator) -> None:
    level = logging.INFO if accelerator.is_main_process else logging.ERROR
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=level, force=True)
    for noisy in ("httpx", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not accelerator.is_main_process:
        transformers.logging.set_verbosity_error()


def encode_split(model: TransferModel, split: Split) -> EncodedDataset:
    return EncodedDataset(model.preprocess(split.texts, split.pairs), split.labels)


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Batches of similar-length examples: almost no compute is spent on padding."""
    order = np.argsort(lengths, kind="stable").tolist()
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def inference_loader(dataset: Dataset, model: TransferModel, batch_size: int) -> DataLoader:
    if isinstance(dataset, EncodedDataset):
        batches = length_sorted_batches(dataset.lengths(), batch_size)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=Collator(model.backbone))
    return DataLoader(dataset, batch_size=batch_size)


def run_inference(
    fn: Callable[..., torch.Tensor],
    dataset: Dataset,
    model: TransferModel,
    accelerator: Accelerator,
    batch_size: int,
    desc: str,
) -> torch.Tensor:
    """Apply ``fn`` to every example, sharded over processes; every process gets all outputs."""
    loader = accelerator.prepare_data_loader(inference_loader(dataset, model, batch_size))
    outputs: torch.Tensor | None = None
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
            batch.pop("labels")
            idx = batch.pop("idx")
            values = fn(**batch).float()
            # Shards can end with batches of different sizes: pad, gather, drop the padding.
            values = accelerator.gather(accelerator.pad_across_processes(values, dim=0))
            idx = accelerator.gather(accelerator.pad_across_processes(idx, dim=0, pad_index=-1))
            if outputs is None:
                outputs = torch.zeros(len(dataset), values.shape[-1])
            keep = idx >= 0
            outputs[idx[keep].cpu()] = values[keep].cpu()
    assert outputs is not None  # datasets are never empty here (load_data refuses that)
    return outputs


def evaluate_split(
    model: TransferModel, dataset: Dataset, accelerator: Accelerator, config: FinetuneConfig, desc: str
) -> dict[str, float]:
    model.eval()
    logits = run_inference(
        model, dataset, accelerator.unwrap_model(model), accelerator, config.eval_batch_size, desc
    )
    labels = dataset.labels.tolist() if isinstance(dataset.labels, torch.Tensor) else dataset.labels
    return compute_metrics(logits.argmax(-1).tolist(), labels, config.metrics)


def extract_features(
    model: TransferModel, data: dict[str, EncodedDataset], accelerator: Accelerator, batch_size: int
) -> dict[str, FeatureDataset]:
    """Run the frozen body once per example, under inference mode, for every split."""
    model.to(accelerator.device).eval()
    features = {}
    for name, dataset in data.items():
        values = run_inference(model.encode, dataset, model, accelerator, batch_size, f"features ({name})")
        features[name] = FeatureDataset(values, dataset.labels)
    return features


def build_datasets(
    model: TransferModel,
    data: TextClassificationData,
    strategy: Strategy,
    accelerator: Accelerator,
    config: FinetuneConfig,
) -> tuple[dict[str, Dataset], float]:
    """Tokenised splits, or body features for frozen strategies; and seconds spent extracting."""
    splits = {"train": data.train, "validation": data.validation}
    if data.test is not None:
        splits["test"] = data.test
    with accelerator.main_process_first():
        encoded = {name: encode_split(model, split) for name, split in splits.items()}
    if not strategy.frozen_body:
        return encoded, 0.0
    start = time.perf_counter()
    features = extract_features(model, encoded, accelerator, config.eval_batch_size)
    return features, time.perf_counter() - start


def train_loader(dataset: Dataset, model: TransferModel, config: FinetuneConfig) -> DataLoader:
    generator = torch.Generator().manual_seed(config.seed)
    if not isinstance(dataset, EncodedDataset):  # fixed-size features: nothing to pad
        return DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator)
    sampler = LengthGroupedSampler(dataset.lengths(), config.batch_size, generator)
    return DataLoader(
        dataset, batch_size=config.batch_size, sampler=sampler, collate_fn=Collator(model.backbone)
    )


def build_optimizer(
    groups: list[dict[str, Any]], loader: DataLoader, config: FinetuneConfig, epochs: int
) -> tuple[torch.optim.Optimizer, Any]:
    optimizer = torch.optim.AdamW(groups)
    # Counted on the unsharded loader: accelerate steps the scheduler once per process.
    steps = max(1, len(loader) * epochs // config.gradient_accumulation_steps)
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, int(steps * config.warmup_ratio), steps
    )
    return optimizer, scheduler


def train_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: Any,
    scheduler: Any,
    accelerator: Accelerator,
    config: FinetuneConfig,
    epoch: int,
    seen: list[int] | None,
) -> float:
    model.train()
    total, count = 0.0, 0
    params = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not accelerator.is_local_main_process, leave=False)
    for step, batch in enumerate(bar):
        with accelerator.accumulate(model):
            labels = batch.pop("labels")
            idx = batch.pop("idx")
            loss = F.cross_entropy(model(**batch), labels)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"The loss became {loss.item()} at epoch {epoch}, step {step}. Lower "
                    "--learning_rate, or use --mixed_precision no if it was fp16."
                )
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        if seen is not None:
            seen.extend(idx.tolist())
        total, count = total + loss.item(), count + 1
        bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
    return total / max(count, 1)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def fit(
    model: TransferModel,
    datasets: dict[str, Dataset],
    groups: list[dict[str, Any]],
    strategy: Strategy,
    accelerator: Accelerator,
    config: FinetuneConfig,
) -> FitResult:
    epochs, patience = strategy.epochs(config), strategy.patience(config)
    loader = train_loader(datasets["train"], model, config)
    optimizer, scheduler = build_optimizer(groups, loader, config, epochs)
    prepared, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    result, best_state = FitResult(), trainable_state(model)
    for epoch in range(1, epochs + 1):
        seen = result.seen_indices if epoch == 1 else None
        loss = train_epoch(prepared, loader, optimizer, scheduler, accelerator, config, epoch, seen)
        scores = evaluate_split(prepared, datasets["validation"], accelerator, config, "validation")
        result.history.append(EpochLog(epoch, loss, scores))
        logger.info("epoch %d/%d: train_loss=%.4f validation %s", epoch, epochs, loss, _fmt(scores))
        score = scores[config.metric_for_best_model]
        if score > result.best_score:
            result.best_epoch, result.best_score = epoch, score
            best_state = trainable_state(accelerator.unwrap_model(prepared))
        elif patience is not None and epoch - result.best_epoch >= patience:
            logger.info("early stopping: no %s gain for %d epochs", config.metric_for_best_model, patience)
            break
    # Keep the best epoch's weights, not the last epoch's.
    model.load_state_dict(best_state, strict=False)
    accelerator.free_memory()
    return result


def _fmt(scores: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in scores.items())


def distributed_report(accelerator: Accelerator, seen: list[int], num_train: int) -> dict[str, Any]:
    """Which training examples each process saw in the first epoch."""
    per_rank = gather_object([sorted(set(seen))])
    sets = [set(s) for s in per_rank]
    overlap = len(set.intersection(*sets)) if len(sets) > 1 else 0
    return {
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "train_examples_per_process": [len(s) for s in sets],
        "examples_seen_by_several_processes": overlap,
        "train_examples_covered": len(set.union(*sets)),
        "num_train_examples": num_train,
    }
