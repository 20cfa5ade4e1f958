"""One complete run: data -> model -> strategy -> fit -> evaluate -> save."""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import accelerate
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed

from nlptransfer.backbones import load_backbone
from nlptransfer.config import FinetuneConfig
from nlptransfer.data import TextClassificationData, load_data
from nlptransfer.layers import count_parameters, format_table, trainable_rows
from nlptransfer.model import TransferModel
from nlptransfer.strategies import get_strategy
from nlptransfer.training import (
    RESULTS_NAME,
    TABLE_NAME,
    FitResult,
    build_accelerator,
    build_datasets,
    check_output_dir,
    default_output_dir,
    distributed_report,
    evaluate_split,
    fit,
    setup_logging,
)
from nlptransfer.version import __version__

logger = logging.getLogger(__name__)


def train(config: FinetuneConfig) -> dict[str, Any]:
    """Train, evaluate and save a classifier as configured; return the results dict."""
    accelerator = build_accelerator(config)
    setup_logging(accelerator)
    strategy = get_strategy(config.strategy)  # an unknown name fails before any slow work
    output_dir = Path(config.output_dir) if config.output_dir else default_output_dir(config)
    _claim_output_dir(output_dir, config, accelerator)
    set_seed(config.seed)
    with accelerator.main_process_first():
        data = load_data(config)
    logger.info("data: %s", _describe(data))
    backbone = load_backbone(config.model, trust_remote_code=config.trust_remote_code)
    model = TransferModel.from_backbone(
        backbone,
        data.label_names,
        pooling=config.pooling,
        layers=strategy.layers(config, backbone.num_blocks()),
        head_dropout=config.head_dropout,
        max_length=config.max_length,
    )
    groups = strategy.configure(model, config)
    table = format_table(trainable_rows(model))
    logger.info("strategy %s, trainable layers:\n%s", strategy.name, table)
    start = time.perf_counter()
    datasets, extraction_seconds = build_datasets(model, data, strategy, accelerator, config)
    result = fit(model, datasets, groups, strategy, accelerator, config)
    train_seconds = time.perf_counter() - start
    model.to(accelerator.device)
    test = (
        evaluate_split(model, datasets["test"], accelerator, config, "test") if "test" in datasets else None
    )
    report = distributed_report(accelerator, result.seen_indices, len(data.train))
    results = _results(
        config, strategy.name, model, data, result, test, train_seconds, extraction_seconds, report
    )
    if accelerator.is_main_process:
        _write_outputs(output_dir, model, config, results, table)
        logger.info("saved model and results to %s; test: %s", output_dir, test)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def versions() -> dict[str, str]:
    return {
        "nlptransfer": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
    }


def _claim_output_dir(output_dir: Path, config: FinetuneConfig, accelerator: Accelerator) -> None:
    check_output_dir(output_dir, config.overwrite_output_dir)
    accelerator.wait_for_everyone()  # every rank checked before the main one deletes
    if accelerator.is_main_process:
        if output_dir.exists() and config.overwrite_output_dir:
            shutil.rmtree(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()


def _describe(data: TextClassificationData) -> str:
    sizes = f"train={len(data.train)} validation={len(data.validation)}"
    if data.test is not None:
        sizes += f" test={len(data.test)}"
    return f"{sizes} labels={data.label_names}"


def _results(
    config: FinetuneConfig,
    strategy: str,
    model: TransferModel,
    data: TextClassificationData,
    result: FitResult,
    test: dict[str, float] | None,
    train_seconds: float,
    extraction_seconds: float,
    distributed: dict[str, Any],
) -> dict[str, Any]:
    trainable, total = count_parameters(model)
    best = result.history[result.best_epoch - 1].validation if result.history else {}
    return {
        "strategy": strategy,
        "model": config.model,
        "labels": data.label_names,
        "test": test,
        "validation": best,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "history": [asdict(h) for h in result.history],
        "train_seconds": round(train_seconds, 3),
        "feature_extraction_seconds": round(extraction_seconds, 3),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "num_train_examples": len(data.train),
        "num_validation_examples": len(data.validation),
        "num_test_examples": len(data.test) if data.test is not None else 0,
        "data": data.report,
        "distributed": distributed,
        "seed": config.seed,
        "versions": versions(),
        "config": config.to_dict(),
    }


def _write_outputs(
    output_dir: Path, model: TransferModel, config: FinetuneConfig, results: dict[str, Any], table: str
) -> None:
    model.save_pretrained(output_dir)
    (output_dir / TABLE_NAME).write_text(table + "\n")
    config.save(output_dir / "run_config.json")
    (output_dir / RESULTS_NAME).write_text(json.dumps(results, indent=2))
