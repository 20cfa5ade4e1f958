"""One complete run: data -> model -> strategy -> fit -> evaluate -> save."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from accelerate.utils import set_seed

from nlptransfer.backbones import Backbone, ImageOptions, VocabOptions, is_word_vector_source
from nlptransfer.config import FinetuneConfig
from nlptransfer.engine.context import RunContext
from nlptransfer.data import TextClassificationData, load_data
from nlptransfer.errors import ConfigError, SaveError
from nlptransfer.engine.features import feature_cache_report
from nlptransfer.engine.inference import evaluate_split
from nlptransfer.model.layers import count_parameters, phase_tables
from nlptransfer.tasks.metrics import MetricSet
from nlptransfer.model.transfer import TransferModel, load_backbone
from nlptransfer.runs.modelcard import CARD_NAME, CardInfo, command_line, push_to_hub, run_details, write_card
from nlptransfer.runs.outputs import (
    check_output_dir,
    hardware,
    resolve_output_dir,
    resource_usage,
    source_commit,
    versions,
    write_run,
)
from nlptransfer.engine.session import finish_session, start_session
from nlptransfer.strategies import Strategy, get_strategy
from nlptransfer.engine.fit import FitResult, distributed_report, fit

logger = logging.getLogger(__name__)


def build_model(
    config: FinetuneConfig,
    labels: list[str],
    strategy: Strategy,
    train_texts: list[str] | None = None,
    modality: str = "text",
) -> TransferModel:
    """The model a run trains: source backbone, pooling and a new head, configured by the strategy.

    ``modality`` is what the data holds ("text" or "image"); the backbone must read it.
    """
    word_options = VocabOptions(
        min_count=config.min_word_count, max_size=config.max_vocab_size, oov=config.oov,
        encoder=config.word_encoder, weighting=config.word_weighting, lowercase=config.word_lowercase,
        seed=config.seed,
    )  # fmt: skip
    if not is_word_vector_source(config.model) and word_options != VocabOptions(seed=config.seed):
        logger.warning("Word-vector options (--word_encoder, --oov, ...) apply only to word-vector models.")
    backbone = load_backbone(
        config.model, config.trust_remote_code, train_texts, word_options, allow_pickle=config.allow_pickle,
        from_scratch=config.from_scratch, image_options=image_options(config),
    )  # fmt: skip
    _check_modality(backbone, modality, config.model)
    if config.reinit_layers:
        backbone.reinit_top_blocks(config.reinit_layers)
    return TransferModel.from_backbone(
        backbone,
        labels,
        pooling=config.pooling,
        # Hidden states of different widths (a CNN's stages) cannot be stacked: pool the top one.
        layers=strategy.layers(config, backbone.num_blocks() if backbone.uniform_hidden_states else 1),
        layer_mix=config.layer_mix,
        head_dropout=config.head_dropout,
        max_length=config.max_length,
    )


def image_options(config: FinetuneConfig) -> ImageOptions | None:
    """The image options of a run (validated), or None when left at their defaults."""
    options = ImageOptions(list(config.augment), config.batchnorm)
    return None if options == ImageOptions() else options


def _check_modality(backbone: Backbone, modality: str, model: str) -> None:
    if backbone.modality != modality:
        fix = (
            "Use an image model (e.g. a ResNet or ViT folder or hub id)"
            if modality == "image"
            else "Use a text model, or image data (--image_column, or a folder of class sub-folders)"
        )
        raise ConfigError(
            f"--model '{model}' reads {backbone.modality}, but the data holds {modality}s. {fix}."
        )


def train(config: FinetuneConfig) -> dict[str, Any]:
    """Train, evaluate and save a classifier as configured; return the results dict.

    Everything that can fail on bad input (strategy, metrics, output folder, data,
    model) is checked before training starts and before an earlier run is replaced.
    """
    run_start = time.time()  # this run alone; results.json's wall_seconds counts from the process start
    strategy = get_strategy(config.strategy)
    image_options(config)  # a bad --augment or --batchnorm fails before anything runs
    metrics = MetricSet(config.metrics, config.trust_remote_code)
    output_dir = resolve_output_dir(config)
    if not config.resume_from_checkpoint:
        check_output_dir(output_dir, config.overwrite_output_dir)
    session = start_session(config, output_dir, "nlptransfer-finetune")
    ctx = RunContext(config, strategy, session.accelerator, metrics, session)
    set_seed(config.seed)
    data = load_data(config)
    logger.info("data: %s", _describe(data))
    texts = data.train.texts + (data.train.pairs or []) if data.modality == "text" else None
    model = build_model(config, data.label_names, strategy, texts, data.modality)
    phases = strategy.phases(model, config)
    table = phase_tables(model, phases)
    logger.info("strategy %s, trainable layers:\n%s", strategy.name, table)
    start = time.perf_counter()
    with session.guard:
        result = fit(model, data, phases, ctx)
    timings = {
        "train_seconds": time.perf_counter() - start,
        "tokenize_seconds": result.tokenize_seconds,
        "feature_extraction_seconds": result.feature_extraction_seconds,
    }
    model.to(ctx.accelerator.device)
    splits = result.eval_datasets
    test = evaluate_split(model, splits["test"], ctx, "test") if "test" in splits else None
    report = distributed_report(ctx.accelerator, result.seen_indices, len(data.train))
    results = _results(ctx, model, data, result, test, timings, report)
    results["feature_cache"] = feature_cache_report(result.features)
    finish_session(session, output_dir, config.metric_for_best_model)
    if ctx.accelerator.is_main_process:
        # Measured last, just before saving (the model's own save is the one step not counted).
        results.update(resource_usage(run_start))
        results["hardware"] = hardware()  # its load average at the end of the run
        write_run(output_dir, model, config, results, table)
        _write_card(output_dir, _card(config, results, table, output_dir))
        logger.info("saved model and results to %s; test: %s", output_dir, test)
        if config.push_to_hub:
            push_to_hub(output_dir, config.hub_model_id)
    ctx.accelerator.wait_for_everyone()
    return results


def _write_card(output_dir: Path, info: CardInfo) -> None:
    try:
        write_card(output_dir, info)
    except OSError as err:
        raise SaveError(
            f"Could not write the model card {output_dir / CARD_NAME}: {err} (disk full?). The model and "
            f"results.json were saved; only {CARD_NAME} is missing or out of date."
        ) from err


def _card(config: FinetuneConfig, results: dict[str, Any], table: str, output_dir: Path) -> CardInfo:
    data = Path(config.train_file).name if config.train_file else config.dataset
    trainable, total = results["trainable_parameters"], results["total_parameters"]
    splits = {"validation": results["validation"], "test": results["test"]}
    details = {
        "Source model": f"`{config.model}`",
        "Strategy": f"`{config.strategy}` (phases: {', '.join(p['name'] for p in results['phases'])})",
        "Data": f"{data}: {results['num_train_examples']} training, {results['num_validation_examples']} "
        f"validation, {results['num_test_examples']} test examples",
        "Labels": ", ".join(map(str, results["labels"])),
        "Trainable parameters": f"{trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)",
        "Epochs": f"{results['epochs_run']} run, best epoch {results['best_epoch']} by validation "
        f"{config.metric_for_best_model}",
        "Optimisation": f"AdamW, batch size {config.batch_size}, {config.lr_scheduler} schedule, "
        f"warmup {config.warmup:g}, seed {config.seed}",
        "Training time": f"{results['train_seconds']:.0f} s",
    }
    details.update(run_details(results))
    kind = results.get("modality", "text")
    example = '["an example text"]' if kind == "text" else '["an_image.jpg"]'
    # A model trained with remote code loads only with the same explicit opt-in.
    remote = ", trust_remote_code=True" if config.trust_remote_code else ""
    usage = (
        "from nlptransfer import TransferModel\n\n"
        f'model = TransferModel.from_pretrained("{output_dir.name}"{remote})  # this folder, or its hub id\n'
        f"print(model.predict({example}).labels)"
    )
    return CardInfo(
        title=output_dir.name,
        summary=f"{'An image' if kind == 'image' else 'A text'} classifier trained by transfer learning "
        f"from `{config.model}` on {data} "
        f"with [nlptransfer](https://github.com/nlptransfer/nlptransfer)'s `{config.strategy}` strategy.",
        base_model=config.model,
        pipeline_tag=f"{kind}-classification",
        results={k: v for k, v in splits.items() if v},
        details=details,
        command=command_line(config, "recipes/finetune.py"),
        usage=usage,
        tags=[f"{kind}-classification", config.strategy],
        dataset=config.dataset if not config.train_file else None,
        sections={"Trainable layers": table},
        versions=results["versions"],
    )


def _describe(data: TextClassificationData) -> str:
    sizes = f"train={len(data.train)} validation={len(data.validation)}"
    if data.test is not None:
        sizes += f" test={len(data.test)}"
    return f"{sizes} labels={data.label_names}"


def _results(
    ctx: RunContext,
    model: TransferModel,
    data: TextClassificationData,
    result: FitResult,
    test: dict[str, float] | None,
    timings: dict[str, float],
    distributed: dict[str, Any],
) -> dict[str, Any]:
    trainable, total = count_parameters(model)
    best = result.history[result.best_epoch - 1].validation if result.best_epoch else {}
    return {
        "strategy": ctx.strategy.name,
        "model": ctx.config.model,
        "labels": data.label_names,
        "modality": data.modality,
        "test": test,
        "validation": best,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "history": [asdict(h) for h in result.history],
        "phases": [asdict(p) for p in result.phases],
        **{name: round(seconds, 3) for name, seconds in timings.items()},
        "feature_extraction_seconds_by_split": {
            name: round(seconds, 3) for name, seconds in result.feature_extraction_seconds_by_split.items()
        },
        "trainable_parameters": trainable,
        "total_parameters": total,
        "num_train_examples": len(data.train),
        "num_validation_examples": len(data.validation),
        "num_test_examples": len(data.test) if data.test is not None else 0,
        "data": data.report,
        "backbone": getattr(model.backbone, "report", {}),
        "distributed": distributed,
        "seed": ctx.config.seed,
        "versions": versions(),
        "hardware": hardware(),
        "source": source_commit(),
        "config": ctx.config.to_dict(),
        "resolved": resolved_options(ctx.strategy, ctx.config),
    }


def resolved_options(strategy: Strategy, config: FinetuneConfig) -> dict[str, Any]:
    """The options left unset (None in ``config``) as the strategy resolved them.

    Phases that set their own values (a head phase, a contrastive one) report them in ``phases``.
    """
    return {
        "learning_rate": strategy.learning_rate(config),
        "epochs": strategy.epochs(config),
        "early_stopping_patience": strategy.patience(config),
    }


__all__ = ["build_model", "train"]
