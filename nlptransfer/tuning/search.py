"""``nlptransfer tune``: an Optuna search over what the run's strategy exposes, resumable.

Each trial is a whole ``train`` run (the feature cache serves every trial that reads the same
frozen features). Trials report their validation score after each epoch and Optuna's median
pruner stops those below the median of earlier trials at that epoch. The study lives in
``OUTPUT_DIR/study.db`` (SQLite): running the same command again continues it. Under several
processes, the main one asks Optuna for each trial's values and every process trains that trial.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlptransfer.config import FinetuneConfig, _opt
from nlptransfer.errors import ConfigError, NLPTransferError
from nlptransfer.tuning.space import Param, apply, search_space

logger = logging.getLogger(__name__)

STUDY_NAME = "nlptransfer-tune"
# Options that say where and how a trial writes, not what it computes: never part of the study's key.
NOT_SEARCH_OPTIONS = {"output_dir", "overwrite_output_dir", "resume_from_checkpoint", "report_to",
                      "save_steps", "save_every_epoch", "push_to_hub", "hub_model_id", "logging_steps",
                      "n_trials", "tune_timeout_minutes", "num_threads", "cache_dir"}  # fmt: skip


@dataclass
class TuneConfig(FinetuneConfig):
    """``nlptransfer tune``: every ``train`` flag (fixed in every trial when given), plus these."""

    n_trials: int = _opt(20, "Trials in all; a resumed study counts the ones it already ran.")
    tune_timeout_minutes: float | None = _opt(
        None, "Start no new trial after this many minutes (the running one finishes)."
    )
    pruning: bool = _opt(
        True,
        "Stop a trial whose validation score after an epoch is below the median of earlier trials at "
        "that epoch (Optuna's MedianPruner, after 3 complete trials).",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_positive(("n_trials",))
        if self.tune_timeout_minutes is not None and not self.tune_timeout_minutes > 0:
            raise ConfigError(f"--tune_timeout_minutes must be positive, got {self.tune_timeout_minutes}.")


@dataclass
class TrialRecord:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    seconds: float
    epochs_run: int | None = None
    note: str = ""


def given_options(config: FinetuneConfig) -> set[str]:
    """Options set to something other than their default: fixed, never searched."""
    defaults = FinetuneConfig()
    return {
        f.name
        for f in dataclasses.fields(FinetuneConfig)
        if getattr(config, f.name) != getattr(defaults, f.name)
    }


def run_tune(config: TuneConfig) -> Path:
    """Run (or continue) the study; write its table, plot and best command; return the report path."""
    from accelerate import PartialState

    from nlptransfer.runs.outputs import resolve_output_dir

    state = PartialState()
    run = config.run_config()
    # Every process searches what the main one resolved (auto's timing estimate could differ).
    base, num_blocks, metric = _broadcast(_resolved_base(run), state)
    space = search_space(base, num_blocks, given_options(run))
    if not space:
        raise ConfigError(
            f"Nothing to search for --strategy {base.strategy} --head {base.head}: every option it "
            "exposes is fixed on the command line."
        )
    out = resolve_output_dir(config, "tune-{data}-{model}-" + base.strategy)
    out.mkdir(parents=True, exist_ok=True)
    study = _study(out, base, metric, config) if state.is_main_process else None
    start = time.perf_counter()
    while True:
        done = len(study.trials) if study is not None else 0
        timed_out = (
            config.tune_timeout_minutes is not None
            and time.perf_counter() - start > 60 * config.tune_timeout_minutes
        )
        trial = study.ask() if study is not None and done < config.n_trials and not timed_out else None
        params = {p.name: p.suggest(trial) for p in space} if trial is not None else None
        params = _broadcast(params, state)
        if params is None:
            break
        _run_trial(study, trial, base, params, num_blocks, metric, out, config.pruning, state)
    if not state.is_main_process:
        return out
    assert study is not None
    return _report(study, base, space, num_blocks, metric, out)


def _resolved_base(run: FinetuneConfig) -> tuple[FinetuneConfig, int, str]:
    """The run's strategy and head, as auto resolves them on the data (the search is over those),
    the body's block count, and the metric the trials are compared by."""
    from nlptransfer.data import load_data
    from nlptransfer.runs.finetune import prepare_run

    resolved, _, prepared = prepare_run(run, load_data(run.data))
    base = dataclasses.replace(run, strategy=resolved.strategy, head=resolved.head)
    metric = resolved.metric_for_best_model or prepared.task.best_metric
    return base, prepared.backbone.num_blocks(), metric


def _study(out: Path, base: FinetuneConfig, metric: str, config: TuneConfig) -> Any:
    import optuna

    from nlptransfer.tasks.metrics import greater_is_better

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3) if config.pruning else optuna.pruners.NopPruner()
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=f"sqlite:///{out / 'study.db'}", load_if_exists=True,
        direction="maximize" if greater_is_better(metric) else "minimize",
        sampler=optuna.samplers.TPESampler(seed=base.seed), pruner=pruner,
    )  # fmt: skip
    key = {
        k: v for k, v in base.to_dict().items() if k not in NOT_SEARCH_OPTIONS and k != "nlptransfer_version"
    }
    saved = study.user_attrs.get("options")
    if saved is None:
        study.set_user_attr("options", json.loads(json.dumps(key, default=str)))
        study.set_user_attr("metric", metric)
    elif saved != json.loads(json.dumps(key, default=str)):
        changed = sorted(k for k in set(saved) | set(key) if saved.get(k) != key.get(k))
        raise ConfigError(
            f"{out / 'study.db'} holds a study run with other options ({', '.join(changed)}). Continue it "
            "with the same options, or pass another --output_dir."
        )
    if study.trials:
        logger.info("tune: continuing the study in %s (%d trials so far)", out, len(study.trials))
    return study


def _broadcast(value: Any, state: Any) -> Any:
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _run_trial(
    study: Any, trial: Any, base: FinetuneConfig, params: dict[str, Any], num_blocks: int, metric: str,
    out: Path, pruning: bool, state: Any,
) -> None:  # fmt: skip
    import optuna

    from nlptransfer.runs.finetune import train

    number = _broadcast(trial.number if trial is not None else None, state)
    folder = out / "trials" / f"trial-{number}"
    options = apply(params, num_blocks)
    config = dataclasses.replace(
        base, **options, output_dir=str(folder), overwrite_output_dir=True, report_to=["none"],
        save_steps=0, save_every_epoch=False, push_to_hub=False, resume_from_checkpoint=None,
    )  # fmt: skip

    def report(epoch: int, score: float) -> None:
        prune = False
        if trial is not None:
            trial.report(score, epoch)
            prune = pruning and trial.should_prune()
        if _broadcast(prune, state):
            raise optuna.TrialPruned(f"epoch {epoch}: {metric} {score:.4f} below the median")

    logger.info("tune: trial %d: %s", number, options)
    started = time.perf_counter()
    try:
        results = train(config, epoch_hook=report)
    except optuna.TrialPruned as pruned:
        logger.info("tune: trial %d pruned (%s)", number, pruned)
        _tell(study, trial, optuna.trial.TrialState.PRUNED, None, started, None, str(pruned))
        shutil.rmtree(folder, ignore_errors=True)
        return
    except NLPTransferError as err:  # a combination the model cannot run: the study goes on
        logger.warning("tune: trial %d failed: %s", number, err)
        _tell(study, trial, optuna.trial.TrialState.FAIL, None, started, None, str(err))
        return
    value = float(results["validation"][metric])
    _tell(study, trial, optuna.trial.TrialState.COMPLETE, value, started, results["epochs_run"], "")
    if study is not None:
        _keep_best_model(study, out)


def _tell(
    study: Any, trial: Any, state: Any, value: float | None, started: float, epochs: int | None, note: str
) -> None:
    """Record a finished trial (main process only): its outcome, time, epochs and why it ended."""
    if study is None:
        return
    trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
    trial.set_user_attr("epochs_run", epochs)
    trial.set_user_attr("note", note)
    study.tell(trial, value, state=state)


def _keep_best_model(study: Any, out: Path) -> None:
    """Only the best trial keeps its saved model (a trial folder holds a whole model); every trial
    keeps its results.json."""
    best = study.best_trial.number
    for folder in (out / "trials").glob("trial-*"):
        if folder.name != f"trial-{best}" and (folder / "model.safetensors").is_file():
            for item in folder.iterdir():
                if item.name not in ("results.json", "README.md"):
                    shutil.rmtree(item) if item.is_dir() else item.unlink()


def records(study: Any) -> list[TrialRecord]:
    return [
        TrialRecord(
            t.number,
            t.state.name.lower(),
            t.value,
            t.params,
            t.user_attrs.get("seconds", 0.0),
            t.user_attrs.get("epochs_run"),
            t.user_attrs.get("note", ""),
        )
        for t in study.trials
    ]


def _report(
    study: Any, base: FinetuneConfig, space: list[Param], num_blocks: int, metric: str, out: Path
) -> Path:
    from nlptransfer.runs.modelcard import command_line
    from nlptransfer.tuning.report import write_report

    rows = records(study)
    complete = [r for r in rows if r.state == "complete"]
    best = None
    if complete:
        trial = study.best_trial
        options = apply(trial.params, num_blocks)
        command = command_line(dataclasses.replace(base, **options, output_dir=None), "recipes/finetune.py")
        best = {"trial": trial.number, "value": trial.value, "params": trial.params, "options": options,
                "command": command, "model": str(out / "trials" / f"trial-{trial.number}")}  # fmt: skip
    return write_report(out, rows, best, metric, [p.name for p in space], base)
