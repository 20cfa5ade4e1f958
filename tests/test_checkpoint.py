"""Checkpoints: atomic saves, rotation, finding the latest, reading back; output-folder and resume checks."""

from __future__ import annotations

import errno
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import nlptransfer.engine.checkpoint
from nlptransfer.config import FinetuneConfig
from nlptransfer.engine.checkpoint import (
    CHECKPOINTS_DIR,
    STATE_NAME,
    Checkpointer,
    Progress,
    complete_checkpoints,
    read_checkpoint,
    resolve_checkpoint,
)
from nlptransfer.engine.session import check_resumable
from nlptransfer.errors import ConfigError, ModelLoadError, OutputDirExistsError, SaveError
from nlptransfer.runs.outputs import RESULTS_NAME, check_output_dir


@pytest.fixture
def prepared() -> tuple[object, torch.nn.Module]:
    """A CPU accelerator with a tiny model and its AdamW prepared (what save_state writes)."""
    from accelerate import Accelerator

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return accelerator, model


def _save(checkpointer: Checkpointer, step: int, state: dict | None = None) -> Path:
    return checkpointer.save(
        Progress(global_step=step), state or {"x": 1}, {"t": torch.ones(2)}, {"seen": [1]}
    )


def _names(out: Path) -> list[str]:
    return sorted(p.name for p in (out / CHECKPOINTS_DIR).iterdir())


def test_rotation_keeps_the_newest_checkpoints(tmp_path: Path, prepared) -> None:
    accelerator, _ = prepared
    checkpointer = Checkpointer(accelerator, tmp_path, total_limit=2)
    paths = [_save(checkpointer, step) for step in (1, 2, 3)]
    assert paths == [tmp_path / CHECKPOINTS_DIR / f"checkpoint-{k}" for k in (1, 2, 3)]
    assert _names(tmp_path) == ["checkpoint-2", "checkpoint-3"]
    assert complete_checkpoints(tmp_path) == paths[1:]
    for path in paths[1:]:
        assert (path / STATE_NAME).is_file()
        assert (path / "model.safetensors").is_file()  # accelerate's own state is in there too


def test_total_limit_zero_keeps_every_checkpoint(tmp_path: Path, prepared) -> None:
    checkpointer = Checkpointer(prepared[0], tmp_path, total_limit=0)
    for step in (1, 2, 3):
        _save(checkpointer, step)
    assert _names(tmp_path) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]


def test_steps_are_ordered_as_numbers(tmp_path: Path, prepared) -> None:
    checkpointer = Checkpointer(prepared[0], tmp_path, total_limit=1)
    _save(checkpointer, 9)
    _save(checkpointer, 10)
    assert _names(tmp_path) == ["checkpoint-10"]
    assert resolve_checkpoint("latest", tmp_path) == tmp_path / CHECKPOINTS_DIR / "checkpoint-10"


def test_read_checkpoint_gives_back_what_was_saved(tmp_path: Path, prepared) -> None:
    accelerator, model = prepared
    progress = Progress(phase=1, epoch=2, batch=5, global_step=7, epoch_loss_sum=1.5, num_processes=1)
    state = {"history": [{"epoch": 1, "loss": 0.25}], "best": 0.5}
    path = Checkpointer(accelerator, tmp_path, 2).save(
        progress, state, {"t": torch.arange(4.0).reshape(2, 2)}, {"seen": [1, 2]}
    )
    checkpoint = read_checkpoint(path)
    assert checkpoint.path == path
    assert checkpoint.progress == progress
    assert checkpoint.state == state
    assert set(checkpoint.tensors) == {"t"}
    assert torch.equal(checkpoint.tensors["t"], torch.arange(4.0).reshape(2, 2))
    assert checkpoint.process_state == {"seen": [1, 2]}
    assert json.loads((path / STATE_NAME).read_text())["progress"] == asdict(progress)

    # accelerate's part of the checkpoint restores the model.
    saved = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    accelerator.load_state(str(path))
    assert torch.equal(model.weight.detach(), saved)


def test_read_checkpoint_without_tensors_or_process_file(tmp_path: Path, prepared) -> None:
    path = Checkpointer(prepared[0], tmp_path, 2).save(Progress(global_step=2), {"a": 1}, {}, {})
    checkpoint = read_checkpoint(path, process_index=3)  # no process_3.json
    assert checkpoint.tensors == {}
    assert checkpoint.process_state == {}
    assert checkpoint.progress.global_step == 2


def test_interrupted_and_incomplete_saves_are_never_latest(tmp_path: Path, prepared) -> None:
    checkpointer = Checkpointer(prepared[0], tmp_path, total_limit=2)
    complete = _save(checkpointer, 3)
    root = tmp_path / CHECKPOINTS_DIR
    leftover = root / ".tmp-checkpoint-9"  # a save killed midway
    leftover.mkdir()
    (leftover / STATE_NAME).write_text(json.dumps({"progress": asdict(Progress(global_step=9))}))
    (root / "checkpoint-7").mkdir()  # no trainer_state.json
    (root / "checkpoint-7" / "model.safetensors").write_bytes(b"")

    assert complete_checkpoints(tmp_path) == [complete]
    assert resolve_checkpoint("latest", tmp_path) == complete

    newer = _save(checkpointer, 4)
    assert not leftover.exists()
    assert resolve_checkpoint("latest", tmp_path) == newer
    assert complete_checkpoints(tmp_path) == [complete, newer]


def test_only_incomplete_checkpoints_is_no_checkpoint(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINTS_DIR / "checkpoint-5").mkdir(parents=True)
    (tmp_path / CHECKPOINTS_DIR / ".tmp-checkpoint-6").mkdir()
    assert complete_checkpoints(tmp_path) == []
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        resolve_checkpoint("latest", tmp_path)


def test_latest_in_an_empty_folder_asks_for_the_output_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_checkpoint("latest", tmp_path)
    assert "--output_dir" in str(info.value)
    assert str(tmp_path / CHECKPOINTS_DIR) in str(info.value)


def test_a_path_that_is_no_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a complete checkpoint"):
        resolve_checkpoint(str(tmp_path / "nowhere" / "checkpoint-3"), tmp_path)


def test_an_explicit_checkpoint_path_and_a_run_folder(tmp_path: Path, prepared) -> None:
    path = _save(Checkpointer(prepared[0], tmp_path, 2), 5)
    assert resolve_checkpoint(str(path), Path("unused")) == path
    for run_folder in (tmp_path, tmp_path / CHECKPOINTS_DIR):
        with pytest.raises(ConfigError, match="It looks like a run folder"):
            resolve_checkpoint(str(run_folder), tmp_path)


def test_saving_twice_at_one_step_keeps_the_newer(tmp_path: Path, prepared) -> None:
    checkpointer = Checkpointer(prepared[0], tmp_path, total_limit=2)
    _save(checkpointer, 4)
    _save(checkpointer, 5, {"v": 1})
    path = _save(checkpointer, 5, {"v": 2})
    assert _names(tmp_path) == ["checkpoint-4", "checkpoint-5"]
    assert read_checkpoint(path).state == {"v": 2}


def _full_disk(tensors: dict, filename: str) -> None:
    Path(filename).write_bytes(b"partial")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_save_removes_its_folder_and_keeps_the_earlier_checkpoints(
    tmp_path: Path, prepared, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpointer = Checkpointer(prepared[0], tmp_path, total_limit=2)
    root = tmp_path / CHECKPOINTS_DIR
    with monkeypatch.context() as patch:
        patch.setattr(nlptransfer.engine.checkpoint, "save_file", _full_disk)
        with pytest.raises(SaveError) as info:
            _save(checkpointer, 3)
    assert str(info.value) == (
        f"Could not write checkpoint 3 to {root}: [Errno 28] No space left on device (disk full?). "
        "Earlier checkpoints are unchanged; none was saved before this one. Free disk space (a lower "
        "--save_total_limit keeps fewer checkpoints)."
    )
    earlier = _save(checkpointer, 4, {"v": 1})
    monkeypatch.setattr(nlptransfer.engine.checkpoint, "save_file", _full_disk)
    for step in (5, 4):  # a new step, and one whose checkpoint the save would replace
        with pytest.raises(SaveError) as info:
            _save(checkpointer, step, {"v": 2})
        assert str(info.value).endswith(
            f"the latest valid one is {earlier}. Free disk space (a lower --save_total_limit keeps fewer "
            "checkpoints), then run the same command with --resume_from_checkpoint latest."
        )
        assert _names(tmp_path) == ["checkpoint-4"]  # no temporary folder left
        assert read_checkpoint(earlier).state == {"v": 1}


def test_a_failed_rename_puts_the_checkpoint_it_replaced_back(
    tmp_path: Path, prepared, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpointer = Checkpointer(prepared[0], tmp_path, total_limit=2)
    earlier = _save(checkpointer, 4, {"v": 1})
    rename = Path.rename

    def failing(self: Path, target: Path) -> Path:
        if self.name == ".tmp-checkpoint-4":
            raise OSError(errno.EIO, "Input/output error")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(SaveError, match="Input/output error"):
        _save(checkpointer, 4, {"v": 2})
    assert _names(tmp_path) == ["checkpoint-4"]
    assert read_checkpoint(earlier).state == {"v": 1}


def test_progress_next_phase() -> None:
    progress = Progress(phase=0, epoch=3, batch=7, global_step=40, epoch_loss_sum=2.0, phase_done=True)
    progress.next_phase()
    assert progress == Progress(phase=1, epoch=1, batch=0, global_step=40, epoch_loss_sum=0.0)


# ---------------------------------------------------------------- output folder and resume checks


def test_unfinished_run_suggests_resuming(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINTS_DIR / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(OutputDirExistsError) as info:
        check_output_dir(tmp_path, overwrite=False)
    assert "--resume_from_checkpoint latest" in str(info.value)
    check_output_dir(tmp_path, overwrite=True)


def test_output_dir_checks(tmp_path: Path) -> None:
    check_output_dir(tmp_path / "new", overwrite=False)  # does not exist yet
    check_output_dir(tmp_path, overwrite=False)  # empty
    finished = tmp_path / "finished"
    finished.mkdir()
    (finished / RESULTS_NAME).write_text("{}")
    (finished / CHECKPOINTS_DIR).mkdir()
    with pytest.raises(OutputDirExistsError, match="already holds a run") as info:
        check_output_dir(finished, overwrite=False)
    assert "--resume_from_checkpoint" not in str(info.value)
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirExistsError, match="holds no earlier run"):
        check_output_dir(unrelated, overwrite=True)


def test_resume_refuses_changed_options(tmp_path: Path) -> None:
    saved = FinetuneConfig().to_dict()
    with pytest.raises(ConfigError) as info:
        check_resumable(saved, FinetuneConfig(batch_size=16, seed=1).to_dict(), tmp_path)
    message = str(info.value)
    assert "--batch_size 32 -> 16" in message
    assert "--seed 42 -> 1" in message
    assert str(tmp_path) in message
    assert "learning_rate" not in message


def test_resume_accepts_changes_that_do_not_change_the_run(tmp_path: Path) -> None:
    saved = FinetuneConfig().to_dict()
    current = FinetuneConfig(
        logging_steps=5,
        save_steps=100,
        report_to=["none"],
        save_total_limit=0,
        resume_from_checkpoint="latest",
    ).to_dict()
    check_resumable(saved, current, tmp_path)


def test_a_damaged_checkpoint_points_to_an_older_one_only(tmp_path: Path, prepared) -> None:
    accelerator, _ = prepared
    checkpointer = Checkpointer(accelerator, tmp_path, total_limit=0)
    first, second, third = (_save(checkpointer, step) for step in (3, 6, 9))
    (second / STATE_NAME).write_text("{cut sho")
    with pytest.raises(ModelLoadError, match=f"cannot be loaded.*--resume_from_checkpoint {first}"):
        read_checkpoint(second)
    (first / STATE_NAME).write_text("{cut sho")
    with pytest.raises(ModelLoadError, match="Start again without --resume_from_checkpoint") as caught:
        read_checkpoint(first)
    assert str(third) not in str(caught.value)  # a newer checkpoint is no way back


def test_a_failure_that_is_not_damage_is_not_reported_as_damage(
    tmp_path: Path, prepared, monkeypatch: pytest.MonkeyPatch
) -> None:
    accelerator, _ = prepared
    path = _save(Checkpointer(accelerator, tmp_path, total_limit=0), 3)

    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(nlptransfer.engine.checkpoint, "load_file", no_memory)
    with pytest.raises(MemoryError):
        read_checkpoint(path)
