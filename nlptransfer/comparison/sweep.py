"""``nlptransfer compare``: strategies x label budgets x seeds on the user's data, resumable."""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from nlptransfer.advisor import (
    AdviseConfig,
    Measurements,
    Recommendation,
    get_arm,
    recommend,
    schedule,
)
from nlptransfer.advisor.arms import MIN_STEPS, Arm, Schedule
from nlptransfer.advisor.auto import AUTO
from nlptransfer.config import FinetuneConfig, _opt
from nlptransfer.data import LabelledData, load_data
from nlptransfer.errors import ConfigError, NLPTransferError

SINGLE = "single_label_classification"

logger = logging.getLogger(__name__)

ALL = "all"
# Budgets of the acceptance sweep; "all" is the whole training split.
DEFAULT_BUDGETS = ["8", "64", "512", ALL]
DEFAULT_ARMS = ["feature-extraction", "finetune-top2", "finetune", "lora"]
VALIDATION_PROTOCOLS = ("k", "full")
# A compare run without a test file holds out this much of the training data to score on.
FALLBACK_TEST_SPLIT = 0.2


@dataclass
class CompareConfig(AdviseConfig):
    """``nlptransfer compare`` / ``recipes/compare.py``: every ``train`` and ``advise`` flag, plus these."""

    arms: list[str] = _opt(
        list(DEFAULT_ARMS), "Strategies to compare: preset arms (see `nlptransfer.advisor.ARMS`), "
        "finetune-topK, or any --strategy name with its defaults.",
    )  # fmt: skip
    budgets: list[str] = _opt(
        list(DEFAULT_BUDGETS),
        "Labelled examples per label to train on (training examples for multi-label and regression), "
        "or 'all'.",
    )
    seeds: list[int] = _opt([0, 1, 2], "Seeds of every small budget (each draws other examples).")
    one_seed_from: int = _opt(
        512, "Budgets of at least this many examples per label, and 'all', run the first seed only."
    )
    validation_protocol: str = _opt(
        "k", "k: as many validation examples per label as training ones (the few-shot protocol); "
        "full: the whole validation split for every budget.",
    )  # fmt: skip
    min_steps: int = _opt(
        MIN_STEPS, "Small budgets get enough epochs for at least this many optimizer steps."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for arm in self.arms:
            get_arm(arm)  # unknown names fail before anything runs, listing the valid ones
        self.budget_values()
        if not self.seeds:
            raise ConfigError("--seeds needs at least one seed.")
        if self.validation_protocol not in VALIDATION_PROTOCOLS:
            raise ConfigError(
                f"--validation_protocol must be one of {', '.join(VALIDATION_PROTOCOLS)}, "
                f"got '{self.validation_protocol}'."
            )
        if self.min_steps < 1:
            raise ConfigError(f"--min_steps must be at least 1, got {self.min_steps}.")
        if self.samples_per_label is not None or self.max_train_examples is not None:
            raise ConfigError("compare sets the training size itself: use --budgets, not "
                              "--samples_per_label or --max_train_examples.")  # fmt: skip

    def budget_values(self) -> list[int | None]:
        """Each budget as examples per label (None: all), smallest first."""
        values: list[int | None] = []
        for budget in self.budgets:
            if budget == ALL:
                values.append(None)
                continue
            if not budget.isdigit() or int(budget) < 1:
                raise ConfigError(
                    f"--budgets takes positive integers (examples per label) or 'all'; got '{budget}'."
                )
            values.append(int(budget))
        return sorted(set(values), key=lambda v: float("inf") if v is None else v)


@dataclass
class Cell:
    """One (arm, budget, seed) run of the sweep and its outcome."""

    arm: str
    budget: str
    seed: int
    # The test score of the metric that picks the best epoch (accuracy, f1_macro when imbalanced,
    # f1_micro for label sets, spearman for regression).
    score: float
    macro_f1: float | None
    train_seconds: float
    trainable_parameters: int
    num_train: int
    epochs_run: int
    # Taken from the folder of an earlier invocation of the same sweep, not run by this one.
    reused: bool = False
    metric: str = "accuracy"
    # What auto chose in this cell's run, as flags (all of it for the auto arm; the head, say, for
    # others).
    auto: str = ""

    @staticmethod
    def from_results(arm: str, budget: str, seed: int, results: dict[str, Any], reused: bool = False) -> Cell:
        test = results["test"] or {}
        metric = (results.get("task") or {}).get("metric_for_best_model", "accuracy")
        return Cell(arm, budget, seed, float(test[metric]), test.get("f1_macro"),
                    float(results["train_seconds"]), int(results["trainable_parameters"]),
                    int(results["num_train_examples"]), int(results["epochs_run"]), reused,
                    metric, _auto_flags(results))  # fmt: skip


def _auto_flags(results: dict[str, Any]) -> str:
    from nlptransfer.advisor.auto import AutoChoice

    return AutoChoice(**results["auto"]).flags() if results.get("auto") else ""


def budget_name(value: int | None) -> str:
    return ALL if value is None else str(value)


def sweep_data(config: CompareConfig) -> tuple[FinetuneConfig, LabelledData]:
    """The training options and the whole data; with a test split held out when the data has none."""
    run = config.run_config()
    data = load_data(run.data)
    if data.test is None:
        logger.info("No test split: holding out %.0f%% of the training data to score every run on.",
                    100 * FALLBACK_TEST_SPLIT)  # fmt: skip
        run = dataclasses.replace(run, test_split=FALLBACK_TEST_SPLIT)
        data = load_data(run.data)
    return dataclasses.replace(run, problem_type=data.problem_type), data


def check_arms(config: CompareConfig, run: FinetuneConfig, data: LabelledData) -> None:
    """Configure every arm on the model once, so one that cannot run fails now, not an hour in."""
    from nlptransfer.runs.finetune import plan_run, texts_for_vocabulary
    from nlptransfer.strategies import get_strategy

    texts = texts_for_vocabulary(data)
    for name in config.arms:
        arm = get_arm(name)
        if arm.strategy == AUTO:  # resolved per budget, when the run starts
            continue
        options = dataclasses.replace(run, **{k: v for k, v in arm.options.items() if k != "epochs"})
        try:
            plan_run(options, get_strategy(arm.strategy), data.label_names, texts, data.modality)
        except NLPTransferError as err:
            raise ConfigError(f"arm '{name}' cannot run on this model: {err} Drop it from --arms.") from err


def advisor_picks(
    config: CompareConfig, run: FinetuneConfig, measured: Measurements
) -> dict[str, Recommendation]:
    """What the advisor recommends at each budget, from the measurements of the whole data."""
    return {
        budget_name(k): recommend(
            measured.profile.with_budget(k),
            measured.familiarity,
            run,
            measured.compute,
            run.time_budget_seconds,
        )
        for k in config.budget_values()
    }


def plan(config: CompareConfig) -> list[tuple[Arm, int | None, int]]:
    """Every (arm, budget, seed) to run, cheapest budgets first so early results arrive early."""
    cells = []
    for k in config.budget_values():
        seeds = config.seeds if k is not None and k < config.one_seed_from else config.seeds[:1]
        cells += [(get_arm(a), k, s) for s in seeds for a in config.arms]
    return cells


def run_sweep(config: CompareConfig, run: FinetuneConfig, measured: Measurements, out: Path) -> list[Cell]:
    from nlptransfer.runs.finetune import train

    cells = []
    for arm, k, seed in tqdm(plan(config), desc="compare", unit="run"):
        num_train = measured.profile.with_budget(k).num_train
        if run.problem_type != SINGLE and k is not None:  # a budget of training examples
            num_train = min(k, measured.profile.num_train)
        options = cell_config(config, run, arm, k, seed, out, num_train)
        folder = Path(options.output_dir or "")
        key = json.dumps({**options.to_dict(), "nlptransfer_version": None}, sort_keys=True, default=str)
        done = folder / "compare_cell.json"
        reused = done.is_file() and json.loads(done.read_text()).get("key") == key
        if reused:
            results = json.loads((folder / "results.json").read_text())
            logger.info("compare: reusing %s (already run)", folder)
        else:
            logger.info("compare: %s, %s per label, seed %d", arm.name, budget_name(k), seed)
            results = train(options)
            done.write_text(json.dumps({"key": key}))  # written last: only finished runs are reused
        cells.append(Cell.from_results(arm.name, budget_name(k), seed, results, reused))
    return cells


def cell_config(
    config: CompareConfig, run: FinetuneConfig, arm: Arm, k: int | None, seed: int, out: Path, num_train: int
) -> FinetuneConfig:
    """The run options of one cell: the user's options, the arm's, the budget's and a schedule.

    ``num_train``: the training examples the budget keeps, which the schedule is made for.
    """
    options = {key: value for key, value in arm.options.items() if key != "epochs"}
    if arm.strategy == AUTO:  # auto schedules (and chooses the rest) itself, as a default run does
        plan_ = Schedule(run.epochs, run.early_stopping_patience, run.batch_size)  # type: ignore[arg-type]
    else:
        plan_ = schedule(arm, num_train, run.batch_size, config.min_steps)
    # Examples per label exist for single labels only; other tasks' budgets count training examples.
    per_label = run.problem_type in (None, SINGLE)
    sizes = {"samples_per_label": k} if per_label else {"max_train_examples": k}
    return dataclasses.replace(
        run, **options, **sizes, seed=seed, epochs=plan_.epochs, batch_size=plan_.batch_size,
        early_stopping_patience=plan_.patience,
        validation_samples_per_label=k if config.validation_protocol == "k" and per_label else None,
        output_dir=str(out / "runs" / f"{arm.name}-{budget_name(k)}-seed{seed}"), overwrite_output_dir=True,
        save_steps=0, save_every_epoch=False, report_to=["none"], push_to_hub=False,
    )  # fmt: skip


def summarise(cells: list[Cell]) -> dict[tuple[str, str], dict[str, float]]:
    """Mean and spread over seeds of each (arm, budget)."""
    groups: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.arm, cell.budget), []).append(cell)
    return {
        key: {
            "mean": statistics.mean(c.score for c in group),
            "std": statistics.pstdev([c.score for c in group]),
            "seeds": len(group),
            "seconds": statistics.mean(c.train_seconds for c in group),
            "trainable": group[0].trainable_parameters,
            "num_train": statistics.mean(c.num_train for c in group),
        }
        for key, group in groups.items()
    }
