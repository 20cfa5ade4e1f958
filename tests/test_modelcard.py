"""Model cards: front matter, results table, the rerun command, and --push_to_hub (with a fake hub)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

from nlptransfer.config import FinetuneConfig, parse_config
from nlptransfer.runs.modelcard import (
    HUB_IGNORE,
    CardInfo,
    PushToHubError,
    command_line,
    push_to_hub,
    render_card,
)

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def _info(**changes: Any) -> CardInfo:
    info = {
        "title": "imdb-minilm-lora",
        "summary": "A sentiment classifier.",
        "base_model": "minilm",
        "pipeline_tag": "text-classification",
        "results": {"validation": {"accuracy": 0.8125, "f1_macro": 0.8}, "test": {"accuracy": 0.75}},
        "details": {"Strategy": "lora", "Epochs": 3},
        "command": "accelerate launch recipes/finetune.py --strategy lora --output_dir 'my runs/x'",
        "usage": "from nlptransfer import load\nmodel = load('x')",
        "tags": ["lora"],
        "dataset": "stanfordnlp/imdb",
        "versions": {"torch": "2.5.0"},
    }
    info.update(changes)
    return CardInfo(**info)


def _card_data(text: str) -> dict[str, Any]:
    from huggingface_hub import ModelCard

    return ModelCard(text).data.to_dict()


def _argv(command: str) -> list[str]:
    parts = shlex.split(command)
    assert parts[:3] == ["accelerate", "launch", "recipes/finetune.py"]
    return parts[3:]


# ---------------------------------------------------------------- rendering


def test_front_matter_is_valid_hub_metadata() -> None:
    text = render_card(_info())
    assert text.startswith("---\n")
    data = _card_data(text)
    assert data["library_name"] == "nlptransfer"
    assert data["base_model"] == MINILM_HUB_ID
    assert data["pipeline_tag"] == "text-classification"
    assert data["tags"] == ["nlptransfer", "transfer-learning", "lora"]
    assert data["datasets"] == ["stanfordnlp/imdb"]


def test_hub_id_is_kept_as_base_model() -> None:
    assert _card_data(render_card(_info(base_model="org/some-model")))["base_model"] == "org/some-model"


@pytest.mark.parametrize(
    "local", ["folder", "./relative/model", "~/models/mine", "glove-6b-50d", "glove:/v.txt"]
)
def test_local_folder_is_no_base_model(tmp_path: Path, local: str) -> None:
    source = str(tmp_path) if local == "folder" else local
    data = _card_data(render_card(_info(base_model=source)))
    assert "base_model" not in data
    assert data["library_name"] == "nlptransfer"


def test_builtin_dataset_name_is_not_listed_as_hub_dataset() -> None:
    assert "datasets" not in _card_data(render_card(_info(dataset="movie-reviews")))


def test_results_table_holds_the_metric_values() -> None:
    lines = render_card(_info()).splitlines()
    header = lines.index("| split | accuracy | f1_macro |")
    assert lines[header + 1] == "|---|---|---|"
    assert lines[header + 2] == "| validation | 0.8125 | 0.8000 |"
    assert lines[header + 3] == "| test | 0.7500 |  |"
    assert "## Results" in lines[:header]


def test_card_sections() -> None:
    info = _info(sections={"Limitations": "English only.\n"})
    text = render_card(info)
    assert f"```bash\n{info.command}\n```" in text
    assert f"```python\n{info.usage}\n```" in text
    assert "- **Strategy**: lora" in text and "- **Epochs**: 3" in text
    assert "## Limitations\n\nEnglish only.\n" in text
    assert "- torch 2.5.0" in text
    assert "# imdb-minilm-lora\n\nA sentiment classifier." in text


def test_no_results_no_table() -> None:
    assert "## Results" not in render_card(_info(results={}))


# ---------------------------------------------------------------- command line


def test_command_line_lists_only_non_default_options() -> None:
    config = FinetuneConfig(strategy="lora", epochs=3, layers=[-1, -2], feature_cache=False)
    command = command_line(config, "recipes/finetune.py")
    assert command == (
        "accelerate launch recipes/finetune.py --epochs 3 --strategy lora --layers -1 -2 --no-feature_cache"
    )
    parsed = parse_config(FinetuneConfig, _argv(command))
    assert parsed.to_dict() == config.to_dict()


def test_command_line_parses_back_with_quoting_floats_and_flags() -> None:
    config = FinetuneConfig(
        output_dir="my runs/x",
        learning_rate=2e-5,
        trust_remote_code=True,
        metrics=["accuracy", "mcc"],
        layers=["all"],
        report_to=["none"],
    )
    command = command_line(config, "recipes/finetune.py")
    argv = _argv(command)
    assert "--trust_remote_code" in argv
    assert argv[argv.index("--output_dir") + 1] == "my runs/x"
    assert parse_config(FinetuneConfig, argv).to_dict() == config.to_dict()


def test_command_line_leaves_out_run_control_options() -> None:
    config = FinetuneConfig(
        resume_from_checkpoint="latest", overwrite_output_dir=True, push_to_hub=True, hub_model_id="me/x"
    )
    command = command_line(config, "recipes/finetune.py")
    assert _argv(command) == ["--hub_model_id", "me/x"]


def test_pretrain_command_line_parses_back() -> None:
    from nlptransfer.runs.pretrain import PretrainConfig

    config = PretrainConfig(
        objective="span", mean_span_length=2.5, heldout_split=0.1, save_every_epoch=False, model="t5-small"
    )
    command = command_line(config, "recipes/pretrain.py")
    parts = shlex.split(command)
    assert parts[:3] == ["accelerate", "launch", "recipes/pretrain.py"]
    assert "--no-save_every_epoch" in parts
    assert parse_config(PretrainConfig, parts[3:]).to_dict() == config.to_dict()


def test_command_line_of_defaults_is_just_the_recipe() -> None:
    assert command_line(FinetuneConfig(), "recipes/finetune.py") == "accelerate launch recipes/finetune.py"


def test_command_line_with_an_empty_list_option_parses_back(tmp_path: Path) -> None:
    yaml_file = tmp_path / "config.yaml"
    yaml_file.write_text("report_to: []\n")
    config = parse_config(FinetuneConfig, ["--config", str(yaml_file)])
    assert config.trackers == []
    command = command_line(config, "recipes/finetune.py")
    try:
        parsed = parse_config(FinetuneConfig, _argv(command))
    except SystemExit as err:  # argparse's usage error
        pytest.fail(f"{command!r} does not parse: exit {err.code}")
    assert parsed.trackers == config.trackers


# ---------------------------------------------------------------- push to hub


class FakeApi:
    """Records what push_to_hub asks of the hub; ``fail`` makes create_repo raise."""

    calls: list[tuple[str, Any]]
    fail: Exception | None = None
    user = "alice"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def whoami(self) -> dict[str, str]:
        FakeApi.calls.append(("whoami", None))
        return {"name": FakeApi.user}

    def create_repo(self, repo_id: str, **kwargs: Any) -> None:
        FakeApi.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        if FakeApi.fail is not None:
            raise FakeApi.fail

    def upload_folder(self, **kwargs: Any) -> None:
        FakeApi.calls.append(("upload_folder", kwargs))


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> type[FakeApi]:
    import huggingface_hub

    monkeypatch.setattr(FakeApi, "calls", [], raising=False)
    monkeypatch.setattr(FakeApi, "fail", None)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi


def test_push_to_hub_under_the_user_account(tmp_path: Path, fake_hub: type[FakeApi]) -> None:
    from huggingface_hub.utils import filter_repo_objects

    out = tmp_path / "my-model"
    out.mkdir()
    assert push_to_hub(out, None) == "alice/my-model"
    names = [name for name, _ in fake_hub.calls]
    assert names == ["whoami", "create_repo", "upload_folder"]
    create, upload = fake_hub.calls[1][1], fake_hub.calls[2][1]
    assert create == {"repo_id": "alice/my-model", "exist_ok": True}
    assert upload["repo_id"] == "alice/my-model"
    assert upload["folder_path"] == str(out)
    assert upload["ignore_patterns"] == HUB_IGNORE
    files = [
        "config.json",
        "model.safetensors",
        "README.md",
        "checkpoints/checkpoint-2/trainer_state.json",
        "checkpoints/checkpoint-2/model.safetensors",
        "logs/events.out",
        ".results.json.tmp",
    ]
    uploaded = list(filter_repo_objects(files, ignore_patterns=upload["ignore_patterns"]))
    assert uploaded == ["config.json", "model.safetensors", "README.md"]


def test_push_to_hub_with_a_full_repo_id_asks_no_user(tmp_path: Path, fake_hub: type[FakeApi]) -> None:
    assert push_to_hub(tmp_path, "org/name") == "org/name"
    assert [name for name, _ in fake_hub.calls] == ["create_repo", "upload_folder"]
    assert fake_hub.calls[1][1]["repo_id"] == "org/name"


def test_push_to_hub_with_a_bare_name_uses_the_account(tmp_path: Path, fake_hub: type[FakeApi]) -> None:
    assert push_to_hub(tmp_path, "name") == "alice/name"
    assert fake_hub.calls[1][1]["repo_id"] == "alice/name"


def test_push_to_hub_failure_names_the_saved_folder(tmp_path: Path, fake_hub: type[FakeApi]) -> None:
    out = tmp_path / "saved-model"
    out.mkdir()
    fake_hub.fail = RuntimeError("401 Client Error: Unauthorized")
    with pytest.raises(PushToHubError) as info:
        push_to_hub(out, "org/name")
    message = str(info.value)
    assert str(out) in message
    assert "401 Client Error" in message
    assert "org/name" in message
    assert isinstance(info.value, OSError)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "upload_folder" not in [name for name, _ in fake_hub.calls]


def test_a_card_that_cannot_be_written_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nlptransfer.runs.modelcard as modelcard

    original = Path.write_text

    def full_disk(self: Path, text: str, *args: object, **kwargs: object) -> int:
        original(self, text[: len(text) // 2])  # part of it reached the disk
        raise OSError(28, "No space left on device")

    (tmp_path / modelcard.CARD_NAME).write_text("the old card")
    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space"):
        modelcard.write_card(tmp_path, _info())
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [modelcard.CARD_NAME]
    assert (tmp_path / modelcard.CARD_NAME).read_text() == "the old card"
