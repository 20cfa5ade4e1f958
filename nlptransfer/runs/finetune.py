"""One complete run: data -> model -> strategy -> fit -> evaluate -> save."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from accelerate.utils import set_seed

from nlptransfer.advisor.auto import AUTO, AutoChoice, resolve_auto
from nlptransfer.backbones import Backbone, ImageOptions, VocabOptions, is_word_vector_source
from nlptransfer.config import FinetuneConfig, VocabularyOptions
from nlptransfer.data import LabelledData, load_data
from nlptransfer.engine.checkpoint import read_checkpoint, resolve_checkpoint
from nlptransfer.engine.context import RunContext
from nlptransfer.engine.features import feature_cache_report
from nlptransfer.engine.fit import FitResult, distributed_report, fit
from nlptransfer.engine.inference import predict_split
from nlptransfer.engine.session import finish_session, start_session
from nlptransfer.engine.sharding import whole_state_dict
from nlptransfer.errors import ConfigError
from nlptransfer.model.layers import count_parameters, phase_tables
from nlptransfer.model.transfer import LongText, TransferModel, load_backbone
from nlptransfer.runs.modelcard import CardInfo, build_card, push_to_hub
from nlptransfer.runs.outputs import (
    check_output_dir,
    hardware,
    resolve_output_dir,
    resource_usage,
    source_commit,
    versions,
    write_run,
)
from nlptransfer.strategies import Strategy, get_strategy
from nlptransfer.strategies.base import Phase
from nlptransfer.tasks.base import DEFAULT_TASK, Task
from nlptransfer.tasks.metrics import MetricSet, per_label_table
from nlptransfer.tasks.setup import configure_task

logger = logging.getLogger(__name__)


def load_source(
    config: FinetuneConfig, vocabulary_texts: list[str] | None = None, modality: str = "text"
) -> Backbone:
    """The source backbone of a run, checked against what the data holds ("text" or "image")."""
    vocabulary = config.vocabulary
    word_options = vocab_options(vocabulary, config.seed)
    if not is_word_vector_source(config.model) and word_options != VocabOptions(seed=config.seed):
        logger.warning("Word-vector options (--word_encoder, --oov, ...) apply only to word-vector models.")
    backbone = load_backbone(
        config.model, config.trust_remote_code, vocabulary_texts, word_options,
        allow_pickle=vocabulary.allow_pickle, from_scratch=config.from_scratch,
        image_options=image_options(config),
    )  # fmt: skip
    _check_modality(backbone, modality, config.model)
    return backbone


def build_model(
    config: FinetuneConfig,
    labels: list[str],
    strategy: Strategy,
    vocabulary_texts: list[str] | None = None,
    modality: str = "text",
    task: Task | None = None,
    backbone: Backbone | None = None,
) -> TransferModel:
    """The model a run trains: source backbone, pooling and a new head, configured by the strategy.

    ``modality`` is what the data holds ("text" or "image"); the backbone must read it. ``task``
    (default: single-label classification) is what the head predicts; ``labels`` name its outputs.
    ``backbone``: the source already loaded (by :func:`load_source`), else it is loaded here.
    """
    backbone = backbone or load_source(config, vocabulary_texts, modality)
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
        task=task or DEFAULT_TASK,
        long_text=long_text_options(config),
        pair_encoding=config.pair_encoding or default_pair_encoding(config, strategy),
    )


def default_pair_encoding(config: FinetuneConfig, strategy: Strategy) -> str:
    """Text pairs read by a frozen body are encoded apart (as bi-encoders read them); joined when
    the body trains (as cross-encoders learn to)."""
    return "separate" if config.text_pair_column and strategy.freezes_body(config) else "joint"


def long_text_options(config: FinetuneConfig) -> LongText | None:
    """How texts longer than --max_length are read: None (truncated), or windows pooled per text."""
    if config.long_text != "chunk":
        return None
    stride = config.max_length // 4 if config.chunk_stride is None else config.chunk_stride
    return LongText(stride, config.chunk_pooling)


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


@dataclass
class RunPlan:
    """The model a run trains and its strategy's phases, each configured once (a bad option fails here)."""

    model: TransferModel
    phases: list[Phase]
    table: str  # which layers train in each phase


def plan_run(
    config: FinetuneConfig, strategy: Strategy, labels: list[str], texts: list[str] | None = None,
    modality: str = "text", task: Task | None = None, backbone: Backbone | None = None,
) -> RunPlan:  # fmt: skip
    """Build the model and configure every phase: what train, layers, compare and advise all do first."""
    model = build_model(config, labels, strategy, texts, modality, task, backbone)
    phases = strategy.phases(model, config)
    return RunPlan(model, phases, phase_tables(model, phases))


def texts_for_vocabulary(data: LabelledData) -> list[str] | None:
    """The texts a word-vector vocabulary is built from: the training texts and their pairs."""
    return data.train.inputs + (data.train.pairs or []) if data.modality == "text" else None


def vocab_options(vocabulary: VocabularyOptions, seed: int) -> VocabOptions:
    """The word-vector backbone's options from the vocabulary section of the command line."""
    return VocabOptions(
        min_count=vocabulary.min_word_count, max_size=vocabulary.max_vocab_size, oov=vocabulary.oov,
        encoder=vocabulary.word_encoder, weighting=vocabulary.word_weighting,
        lowercase=vocabulary.word_lowercase, seed=seed,
    )  # fmt: skip


def train(config: FinetuneConfig, epoch_hook: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train, evaluate and save a classifier as configured; return the results dict.

    Everything that can fail on bad input (strategy, metrics, output folder, data,
    model) is checked before training starts and before an earlier run is replaced.
    ``epoch_hook(epoch, validation score)`` is called after every validated epoch (``tune``).
    """
    run_start = time.time()  # this run alone; results.json's wall_seconds counts from the process start
    output_dir = _check_options(config)
    data = load_data(config.data)
    logger.info("data: %s", _describe(data))
    # Task-dependent defaults are filled in before the session: checkpoints hold the resolved config.
    config, data, prepared = prepare_run(config, data, _resumed_options(config, output_dir), run_start)
    task, task_notes, backbone, auto = prepared.task, prepared.task_notes, prepared.backbone, prepared.auto
    strategy = get_strategy(config.strategy)
    session = start_session(config, output_dir, "nlptransfer-finetune")
    metrics = MetricSet(config.metrics, config.trust_remote_code)
    ctx = RunContext(config, strategy, session.accelerator, metrics, session, epoch_hook)
    set_seed(config.seed)
    plan = plan_run(config, strategy, data.label_names, None, data.modality, task, backbone)
    model, table = plan.model, plan.table
    logger.info("strategy %s, trainable layers:\n%s", strategy.name, table)
    start = time.perf_counter()
    with session.guard:
        result = fit(model, data, plan.phases, ctx)
    timings = {
        "train_seconds": time.perf_counter() - start,
        "tokenize_seconds": result.tokenize_seconds,
        "feature_extraction_seconds": result.feature_extraction_seconds,
        "activation_seconds": result.activation_seconds,
    }
    model.to(ctx.accelerator.device)
    final = final_evaluation(model, result.eval_datasets, ctx, result.out_of_fold)
    report = distributed_report(ctx.accelerator, result.seen_indices, len(data.train), model)
    tuned = final.pop("tuned", {})
    results = _results(ctx, model, data, result, final.pop("test", None), timings, report)
    results.update(final)  # the per-label table, and the validation scores after tuning
    results["task"] = {**task_notes, **tuned}
    results["auto"] = auto.to_dict()
    results["protocol"] = config.protocol
    results["feature_cache"] = feature_cache_report(result.features)
    results["activation_cache"] = result.activations.to_dict()
    finish_session(session, output_dir, config.metric_for_best_model)
    weights = whole_state_dict(ctx.accelerator, model)  # gathered from the shards under FSDP
    if ctx.accelerator.is_main_process:
        # Measured last, just before saving (the model's own save is the one step not counted).
        results.update(resource_usage(run_start))
        results["hardware"] = hardware()  # its load average at the end of the run
        card = _card(config, results, table, output_dir)
        write_run(output_dir, model, config, results, table, card, weights)
        logger.info("saved model and results to %s; test: %s", output_dir, results["test"])
        if config.push_to_hub:
            push_to_hub(output_dir, config.hub_model_id)
    ctx.accelerator.wait_for_everyone()
    return results


@dataclass
class PreparedRun:
    """What a run decides before it trains: the task, the loaded source, and auto's choice."""

    task: Task
    task_notes: dict[str, Any]
    backbone: Backbone
    auto: AutoChoice


def prepare_run(
    config: FinetuneConfig, data: LabelledData, resumed: dict[str, Any] | None = None,
    started: float | None = None,
) -> tuple[FinetuneConfig, LabelledData, PreparedRun]:  # fmt: skip
    """The task's and auto's choices filled into ``config`` (and the data as the chosen protocol
    uses it), with the source model loaded once: what ``train`` and ``tune`` do first. ``started``:
    the run's ``time.time()`` at its start, from which the time budget counts."""
    config, task, task_notes = configure_task(config, data)
    set_seed(config.seed)  # a body with random parts (a BiLSTM on word vectors) starts seeded
    backbone = load_source(config, texts_for_vocabulary(data), data.modality)
    config, data, auto = resolve_auto(config, data, task, backbone, resumed, started)
    logger.info("%s", auto.render())
    return config, data, PreparedRun(task, task_notes, backbone, auto)


def _check_options(config: FinetuneConfig) -> Path:
    """Options that can fail on their own fail before anything loads; returns the output folder."""
    if config.strategy != AUTO:
        get_strategy(config.strategy)
    image_options(config)  # --augment, --batchnorm
    if config.metrics is not None:
        MetricSet(config.metrics, config.trust_remote_code)
    output_dir = resolve_output_dir(config)
    if not config.resume_from_checkpoint:
        check_output_dir(output_dir, config.overwrite_output_dir)
    return output_dir


def _resumed_options(config: FinetuneConfig, output_dir: Path) -> dict[str, Any] | None:
    """The resolved options of the run a --resume_from_checkpoint continues (auto decides once)."""
    if not config.resume_from_checkpoint:
        return None
    path = resolve_checkpoint(config.resume_from_checkpoint, output_dir)
    return read_checkpoint(path).state.get("config")


def final_evaluation(
    model: TransferModel, splits: dict[str, Any], ctx: RunContext, out_of_fold: tuple[Any, Any] | None = None
) -> dict[str, Any]:
    """After the best weights are back: the probabilities calibrated and the decisions (multi-label
    thresholds) tuned on held-out outputs (the validation split, else the out-of-fold outputs of
    --protocol cross-validation), the test scores, the calibration before and after, and the
    per-class (per-label, per-target) table of the test split (else the held-out outputs)."""
    task, final = model.task, {}
    name = "test" if "test" in splits else "validation"
    held_out = _held_out_outputs(model, splits, ctx, out_of_fold)
    fitted = None
    if held_out is not None:
        source, outputs, references = held_out
        fitted = task.calibrate(outputs, references) if ctx.config.calibration != "none" else None
        tuned = task.tune(outputs, references) if task.tunes else None
        if tuned is not None:
            final["tuned"] = tuned
            final["validation_tuned"] = ctx.metrics.compute(task.predictions(outputs), references)
            logger.info("tuned on validation: %s; validation %s", tuned, final["validation_tuned"])
    if name == "test":
        outputs, references = predict_split(model, splits["test"], ctx, "test")
        final["test"] = ctx.metrics.compute(task.predictions(outputs), references)
    if fitted is not None:
        # Without a test split the outputs scored are the held-out ones calibration fitted on.
        scored = name if name == "test" else source
        final["calibration"] = _calibration(task, fitted, source, outputs, references, scored)
    table = per_label_table(task.name, task.predictions(outputs), references, model.labels)
    final["per_label"] = {"split": name, "table": table}
    return final


def _held_out_outputs(
    model: TransferModel, splits: dict[str, Any], ctx: RunContext, out_of_fold: tuple[Any, Any] | None
) -> tuple[str, Any, Any] | None:
    """(where from, outputs, references) that calibration and tuning may fit on, or None when
    nothing needs them (a test split scores the run, nothing is fitted)."""
    task = model.task
    if "validation" not in splits:
        assert out_of_fold is not None or "test" in splits  # no validation split: cross-validated
        if out_of_fold is None:
            return None
        return "out-of-fold", out_of_fold[0], task.references(out_of_fold[1])
    if task.tunes or ctx.config.calibration != "none" or "test" not in splits:
        return "validation", *predict_split(model, splits["validation"], ctx, "validation")
    return None


def _calibration(
    task: Task, fitted: dict[str, Any], source: str, outputs: Any, references: Any, split: str
) -> dict[str, Any]:
    """What calibration fitted on ``source`` and, when it fitted a temperature, the expected
    calibration error of ``split`` before and after."""
    if fitted.get("method") != "temperature":
        logger.info("probabilities not calibrated: %s", fitted.get("reason"))
        return {**fitted, "fitted_on": source}
    report = {**fitted, "fitted_on": source, **task.calibration(outputs, references, split)}
    logger.info(
        "calibrated on %s: temperature %s; expected calibration error on %s %.4f -> %.4f",
        source, fitted["temperature"], split, report["ece_before"], report["ece_after"],
    )  # fmt: skip
    return report


def _card(config: FinetuneConfig, results: dict[str, Any], table: str, output_dir: Path) -> CardInfo:
    data = Path(config.train_file).name if config.train_file else config.dataset
    trainable, total = results["trainable_parameters"], results["total_parameters"]
    splits = {"validation": results["validation"], "test": results["test"]}
    details = {
        "Source model": f"`{config.model}`",
        "Strategy": f"`{config.strategy}` (phases: {', '.join(p['name'] for p in results['phases'])})",
        "Data": f"{data}: {results['num_train_examples']} training, {results['num_validation_examples']} "
        f"validation, {results['num_test_examples']} test examples",
        "Task": f"{results['problem_type']} ({results['task']['problem_type_reason']})",
        "Targets" if results["problem_type"] == "regression" else "Labels": ", ".join(
            map(str, results["labels"])
        ),
        "Class weights": f"{results['task']['class_weight']} ({results['task']['class_weight_rule']})",
        "Trainable parameters": f"{trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)",
        "Epochs": f"{results['epochs_run']} run, best epoch {results['best_epoch']} by validation "
        f"{config.metric_for_best_model}",
        "Validation": "out-of-fold scores of 5-fold cross-validation on the training data"
        if results["protocol"] == "cross-validation"
        else "the held-out validation split",
    }
    calibration = results.get("calibration", {})
    if "ece_after" in calibration:
        details["Calibration"] = (
            f"temperature scaling fitted on the {calibration['fitted_on']} outputs; expected calibration "
            f"error on {calibration['evaluated_on']} {calibration['ece_before']:.4f} -> "
            f"{calibration['ece_after']:.4f} (reliability.png)"
        )
    chosen = AutoChoice(**results["auto"]).flags()
    if chosen:
        details["Chosen by auto"] = f"`{chosen}`"
    kind = results.get("modality", "text")
    example = '["an example text"]' if kind == "text" else '["an_image.jpg"]'
    # A model trained with remote code loads only with the same explicit opt-in.
    remote = ", trust_remote_code=True" if config.trust_remote_code else ""
    usage = (
        "from nlptransfer import TransferModel\n\n"
        f'model = TransferModel.from_pretrained("{output_dir.name}"{remote})  # this folder, or its hub id\n'
        f"print(model.predict({example}).labels)"
    )
    return build_card(
        config, results, output_dir, "recipes/finetune.py",
        summary=f"{'An image' if kind == 'image' else 'A text'} {_model_kind(results['problem_type'])} "
        "trained by transfer learning "
        f"from `{config.model}` on {data} "
        f"with [nlptransfer](https://github.com/nlptransfer/nlptransfer)'s `{config.strategy}` strategy.",
        pipeline_tag=f"{kind}-classification",
        details=details,
        usage=usage,
        results={k: v for k, v in splits.items() if v},
        tags=[f"{kind}-classification", config.strategy],
        dataset=config.dataset if not config.train_file else None,
        sections={"Trainable layers": table, **_auto_section(results["auto"])},
    )  # fmt: skip


def _auto_section(auto: dict[str, Any]) -> dict[str, str]:
    """The model card's account of what auto chose and why (nothing when it chose nothing)."""
    if not auto["reasons"]:
        return {}
    return {"Why these options (auto)": "\n".join(f"- {reason}" for reason in auto["reasons"])}


def _model_kind(problem_type: str) -> str:
    return {"regression": "regression model", "multi_label_classification": "multi-label classifier"}.get(
        problem_type, "classifier"
    )


def _describe(data: LabelledData) -> str:
    sizes = f"train={len(data.train)} validation={len(data.validation) if data.validation else 0}"
    if data.test is not None:
        sizes += f" test={len(data.test)}"
    return f"{sizes} labels={data.label_names}"


def _results(
    ctx: RunContext,
    model: TransferModel,
    data: LabelledData,
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
        "problem_type": data.problem_type,
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
        "num_validation_examples": len(data.validation) if data.validation is not None else 0,
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


__all__ = ["RunPlan", "build_model", "plan_run", "texts_for_vocabulary", "train"]
