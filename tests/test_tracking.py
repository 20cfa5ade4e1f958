"""Experiment tracking: the JSONL tracker, its resume, tracker selection and the training-curve plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nlptransfer.engine.tracking as tracking
from nlptransfer.engine.tracking import (
    LOG_NAME,
    JSONLTracker,
    build_trackers,
    flat_config,
    plot_curves,
    read_log,
)
from nlptransfer.errors import ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_jsonl_tracker_writes_one_record_per_log(tmp_path: Path) -> None:
    path = tmp_path / "sub" / LOG_NAME
    tracker = JSONLTracker(path)
    tracker.start()
    tracker.log({"train/loss": 0.5, "train/learning_rate": 1e-3}, step=1)
    tracker.log({"validation/accuracy": 0.75}, step=2)
    tracker.finish()
    records = read_log(path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["train/loss"] == 0.5 and records[0]["train/learning_rate"] == 1e-3
    assert records[1]["validation/accuracy"] == 0.75
    assert all(isinstance(r["time"], float) for r in records)
    assert tracker.tracker is None  # the file is closed


def test_fresh_start_deletes_an_old_log(tmp_path: Path) -> None:
    path = tmp_path / LOG_NAME
    _write(path, [{"step": 1, "old": 1}, {"step": 2, "old": 2}])
    tracker = JSONLTracker(path)
    tracker.start()
    tracker.log({"new": 1}, step=1)
    tracker.finish()
    assert [(r["step"], "old" in r, r.get("new")) for r in read_log(path)] == [(1, False, 1)]


def test_resume_keeps_records_up_to_the_step_and_appends(tmp_path: Path) -> None:
    path = tmp_path / LOG_NAME
    first = JSONLTracker(path)
    first.start()
    for step in range(1, 6):
        first.log({"train/loss": float(step)}, step=step)
    first.finish()

    resumed = JSONLTracker(path, resume_step=3)
    resumed.start()
    resumed.log({"train/loss": 40.0}, step=4)
    resumed.finish()
    records = read_log(path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["train/loss"] for r in records] == [1.0, 2.0, 3.0, 40.0]


def test_resume_without_an_old_log_starts_one(tmp_path: Path) -> None:
    path = tmp_path / LOG_NAME
    tracker = JSONLTracker(path, resume_step=7)
    tracker.start()
    tracker.log({"a": 1}, step=8)
    tracker.finish()
    assert [(r["step"], r["a"]) for r in read_log(path)] == [(8, 1)]


def test_read_log_skips_a_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / LOG_NAME
    path.write_text('{"step": 1, "x": 1}\n{"step": 2, "x": 2}\n{"step": 3, "x"')
    assert read_log(path) == [{"step": 1, "x": 1}, {"step": 2, "x": 2}]


def test_build_trackers_without_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "is_tensorboard_available", lambda: False)
    trackers = build_trackers(["jsonl", "tensorboard"], tmp_path, resume_step=5)
    assert len(trackers) == 1
    assert isinstance(trackers[0], JSONLTracker)
    assert trackers[0].path == tmp_path / LOG_NAME
    assert trackers[0].resume_step == 5
    assert build_trackers(["tensorboard"], tmp_path, None) == []


def test_build_trackers_with_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "is_tensorboard_available", lambda: True)
    trackers = build_trackers(["jsonl", "tensorboard"], tmp_path, resume_step=None)
    assert isinstance(trackers[0], JSONLTracker) and trackers[0].resume_step is None
    assert trackers[1:] == ["tensorboard"]
    assert build_trackers(["tensorboard"], tmp_path, None) == ["tensorboard"]
    assert build_trackers([], tmp_path, None) == []


def test_flat_config_turns_non_scalars_into_strings() -> None:
    flat = flat_config({"layers": [-1, -2], "lr": 0.1, "name": "x", "epochs": 3, "cpu": True, "head": None})
    assert flat == {"layers": "[-1, -2]", "lr": 0.1, "name": "x", "epochs": 3, "cpu": True, "head": "None"}


def test_plot_curves_writes_a_png(tmp_path: Path) -> None:
    log = tmp_path / LOG_NAME
    records = [{"step": s, "train/loss": 1.0 / s, "train/learning_rate": 1e-3 * s} for s in range(1, 11)]
    records += [{"step": 5, "validation/accuracy": 0.6}, {"step": 10, "validation/accuracy": 0.8}]
    _write(log, records)
    png = tmp_path / "curves.png"
    assert plot_curves(log, png, "accuracy") == png
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000


def test_plot_curves_without_a_log_or_records(tmp_path: Path) -> None:
    png = tmp_path / "curves.png"
    assert plot_curves(tmp_path / "missing.jsonl", png) is None
    log = tmp_path / LOG_NAME
    _write(log, [{"step": 1, "other": 2}])
    assert plot_curves(log, png) is None
    assert not png.exists()


def test_accelerator_logs_through_the_jsonl_tracker(tmp_path: Path) -> None:
    from accelerate import Accelerator

    path = tmp_path / LOG_NAME
    accelerator = Accelerator(cpu=True, log_with=[JSONLTracker(path)])
    accelerator.init_trackers("x")
    accelerator.log({"a": 1.0}, step=3)
    accelerator.log({"b": 2.5}, step=4)
    for tracker in accelerator.trackers:
        tracker.finish()
    records = read_log(path)
    assert [(r["step"], r.get("a"), r.get("b")) for r in records] == [(3, 1.0, None), (4, None, 2.5)]


def test_a_full_disk_stops_the_log_with_a_warning_not_the_run(tmp_path: Path, caplog) -> None:
    path = tmp_path / LOG_NAME
    tracker = JSONLTracker(path)
    tracker.start()
    tracker.log({"train/loss": 0.5}, step=1)

    class FullDisk:
        def write(self, text: str) -> None:
            raise OSError(28, "No space left on device")

        def flush(self) -> None:
            raise OSError(28, "No space left on device")

        close = flush

    real, tracker._file = tracker._file, FullDisk()
    real.close()
    with caplog.at_level("WARNING"):
        tracker.log({"train/loss": 0.4}, step=2)
        tracker.log({"train/loss": 0.3}, step=3)  # after the failure: nothing, no error
        tracker.finish()
    assert caplog.text.count("Could not write the training log") == 1
    assert [r["step"] for r in read_log(path)] == [1]


def test_report_to_takes_every_tracker_accelerate_has() -> None:
    from accelerate.utils import LoggerType

    from nlptransfer.config import TRACKERS

    assert set(TRACKERS) == {t.value for t in LoggerType if t.value != "all"} | {"jsonl", "none"}


@pytest.mark.parametrize(
    ("name", "package"), [("wandb", "wandb"), ("mlflow", "mlflow"), ("comet_ml", "comet-ml")]
)
def test_a_tracker_whose_package_is_missing_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, package: str
) -> None:
    import accelerate.utils.imports as accelerate_imports

    monkeypatch.setattr(accelerate_imports, f"is_{name}_available", lambda: False)
    with pytest.raises(
        ConfigError, match=rf"--report_to {name} needs the {package} package.*pip install {package}"
    ):
        build_trackers(["jsonl", name], tmp_path, None)


# A stand-in for the wandb package: what accelerate's WandBTracker calls, recorded as JSON lines.
FAKE_WANDB = """
import json, os

def _record(**call):
    with open(os.environ["FAKE_WANDB_LOG"], "a") as f:
        f.write(json.dumps(call, default=str) + "\\n")

class _Config:
    def update(self, values, allow_val_change=False):
        _record(call="config", values=values)

class _Run:
    def log(self, values, step=None, **kwargs):
        _record(call="log", values=values, step=step)

    def finish(self):
        _record(call="finish")

config = _Config()

def init(project=None, **kwargs):
    _record(call="init", project=project)
    return _Run()
"""


def _fake_wandb(folder: Path) -> Path:
    (folder / "wandb").mkdir(parents=True)
    (folder / "wandb" / "__init__.py").write_text(FAKE_WANDB)
    info = folder / "wandb-0.0.0.dist-info"  # accelerate checks the distribution's metadata too
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wandb\nVersion: 0.0.0\n")
    return folder


def test_report_to_an_installed_tracker_logs_through_accelerate(
    tiny_bert: str, sentiment_csv: Path, tmp_path: Path
) -> None:
    import os
    import subprocess

    from conftest import REPO, recipe

    out, log = tmp_path / "run", tmp_path / "wandb-calls.jsonl"
    args = recipe("--model", tiny_bert, "--train_file", str(sentiment_csv),
                  "--strategy", "feature-extraction", "--epochs", "2", "--output_dir", str(out),
                  "--logging_steps", "2", "--save_steps", "0",
                  "--report_to", "jsonl", "wandb")  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FAKE_WANDB_LOG": str(log)}
    # Without the package: one clear line, exit 2, nothing written.
    missing = subprocess.run(args, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert missing.returncode == 2 and "pip install wandb" in missing.stderr
    assert not out.exists() and not log.exists()
    # With the stand-in on the path, accelerate's WandBTracker gets the run's config and every log.
    env["PYTHONPATH"] = os.pathsep.join([str(_fake_wandb(tmp_path / "site")), str(REPO)])
    done = subprocess.run(args, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    calls = read_log(log)
    assert calls[0] == {"call": "init", "project": "nlptransfer-finetune"} and calls[-1] == {"call": "finish"}
    assert any(c["call"] == "config" and c["values"]["strategy"] == "feature-extraction" for c in calls)
    logged = [c for c in calls if c["call"] == "log"]
    ours = read_log(out / LOG_NAME)  # the JSONL log: the same records, step by step
    expected = [(r["step"], {k: v for k, v in r.items() if k not in ("step", "time")}) for r in ours]
    assert [(c["step"], c["values"]) for c in logged] == expected
    assert any("train/loss" in c["values"] for c in logged)
    assert any("validation/accuracy" in c["values"] for c in logged)
