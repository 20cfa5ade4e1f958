"""The Objective and Task contracts: a new objective or task is a registered entry, not a new branch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from conftest import sentiment_frame
from torch.utils.data import DataLoader

from nlptransfer import FinetuneConfig, TransferModel, get_strategy
from nlptransfer.data import LabelledData, Split
from nlptransfer.engine.context import RunContext
from nlptransfer.engine.fit import fit
from nlptransfer.engine.loop import TrainSession, run_phase
from nlptransfer.engine.objectives import OBJECTIVES, Objective
from nlptransfer.model.transfer import CONFIG_NAME
from nlptransfer.strategies.base import LOOPS, param_groups
from nlptransfer.tasks.base import TASKS, SingleLabelClassification, Task
from nlptransfer.tasks.metrics import MetricSet


def _data(n: int = 48) -> LabelledData:
    frame = sentiment_frame(n)
    split = Split(frame["text"].tolist(), [int(v == "pos") for v in frame["label"]])
    return LabelledData(["neg", "pos"], train=split, validation=split)


def test_every_phase_loop_a_strategy_names_is_a_registered_fine_tuning_objective() -> None:
    for loop in LOOPS:
        objective = OBJECTIVES.get(loop)
        assert objective.from_phase is not Objective.from_phase, loop
    assert {"mlm", "clm", "span"} <= set(OBJECTIVES)


class _Squares(Objective):
    """A toy objective: drive a linear layer's output towards zero."""

    desc = "toy epoch"

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def loader(self) -> DataLoader:
        points = torch.arange(24, dtype=torch.float32).reshape(12, 2) / 24
        return DataLoader([{"x": x} for x in points], batch_size=4)

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        return model(batch["x"]).pow(2).mean()


class _Record:
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_epoch_end(self, train_loss: float) -> bool:
        self.losses.append(train_loss)
        return False


def test_run_phase_trains_any_objective_that_meets_the_contract() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3)
    session = TrainSession(Accelerator(cpu=True), FinetuneConfig(), checkpointer=None)
    objective, hook = _Squares(), _Record()
    groups = param_groups(list(model.named_parameters()), 0.1, 0.0)
    run_phase(session, model, groups, objective, 3, hook)
    assert objective.epochs == [1, 2, 3] and len(hook.losses) == 3
    assert hook.losses[-1] < hook.losses[0]  # it trained on the objective's loss
    assert session.progress.global_step == 9  # 3 batches per epoch, one optimizer step each


class _Counting(SingleLabelClassification):
    """Single-label classification whose loss counts its calls."""

    name = "counting_classification"
    calls = 0

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        return super().loss(outputs, targets)

    def predictions(self, outputs: torch.Tensor) -> np.ndarray:
        return np.zeros(len(outputs), dtype=np.int64)  # always the first label: the scores must show it


@pytest.fixture
def counting_task() -> type[Task]:
    TASKS.register(_Counting.name)(_Counting)
    yield _Counting
    TASKS._items.pop(_Counting.name)


def test_a_registered_task_drives_the_loss_the_scores_and_the_saved_config(
    tiny_bert: str, counting_task: type[Task], tmp_path: Path
) -> None:
    config = FinetuneConfig(model=tiny_bert, strategy="finetune", epochs=1, batch_size=16)
    strategy = get_strategy(config.strategy)
    model = TransferModel.from_backbone(tiny_bert, ["neg", "pos"], task=counting_task.name)
    ctx = RunContext(config, strategy, Accelerator(cpu=True), MetricSet(config.metrics))
    data = _data()
    result = fit(model, data, strategy.phases(model, config), ctx)
    assert counting_task.calls == 3  # 48 examples in batches of 16, one epoch
    share = np.mean(np.asarray(data.validation.labels) == 0)
    assert result.history[-1].validation["accuracy"] == pytest.approx(share)  # its predictions were scored
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["task"]["type"] == counting_task.name
    assert isinstance(TransferModel.from_pretrained(tmp_path).task, counting_task)


def test_single_label_classification_meets_the_task_contract() -> None:
    task = SingleLabelClassification()
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.5, 3.0]])
    targets = torch.tensor([0, 2])
    torch.testing.assert_close(task.loss(logits, targets), F.cross_entropy(logits, targets))
    scores = task.activate(logits)
    torch.testing.assert_close(scores.sum(-1), torch.ones(2))
    assert task.decode(scores.numpy(), ["a", "b", "c"]) == ["a", "c"]
    assert task.predictions(logits).tolist() == [0, 2]


def test_a_model_saved_before_tasks_existed_loads_as_single_label(tiny_bert: str, tmp_path: Path) -> None:
    TransferModel.from_backbone(tiny_bert, ["neg", "pos"]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    saved = {"type": "single_label_classification", "class_weights": None, "temperature": None}
    assert config.pop("task") == saved
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    loaded = TransferModel.from_pretrained(tmp_path)
    assert isinstance(loaded.task, SingleLabelClassification)
    assert loaded.predict(["a great film"]).labels[0] in {"neg", "pos"}
