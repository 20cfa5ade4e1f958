"""Configuration: defaults < YAML < CLI, flag types, validation and serialisation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from nlptransfer.config import FinetuneConfig, parse_config
from nlptransfer.errors import ConfigError
from nlptransfer.version import __version__


def _yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    config = parse_config(FinetuneConfig, [])
    assert config == FinetuneConfig()
    assert config.batch_size == 32
    assert config.validation_split == 0.1
    assert config.metrics is None  # chosen for the task once the data is read
    assert config.metric_for_best_model is None and config.class_weight == "auto"
    assert config.layers is None
    assert config.overwrite_output_dir is False


def test_default_lists_are_not_shared() -> None:
    first, second = FinetuneConfig(), FinetuneConfig()
    first.report_to.append("wandb")
    assert second.report_to == ["jsonl", "tensorboard"]


def test_precedence_defaults_yaml_cli(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "batch_size: 8\nlearning_rate: 0.001\nmodel: from-yaml\nseed: 3\n")
    from_yaml = parse_config(FinetuneConfig, ["--config", path])
    assert (from_yaml.batch_size, from_yaml.learning_rate, from_yaml.model, from_yaml.seed) == (
        8,
        0.001,
        "from-yaml",
        3,
    )
    assert from_yaml.eval_batch_size == 64  # untouched default

    both = parse_config(FinetuneConfig, ["--config", path, "--batch_size", "16", "--model", "from-cli"])
    assert both.batch_size == 16
    assert both.model == "from-cli"
    assert both.learning_rate == 0.001  # YAML still beats the default
    assert both.seed == 3


def test_cli_flag_order_does_not_matter(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "batch_size: 8\n")
    config = parse_config(FinetuneConfig, ["--batch_size", "4", "--config", path])
    assert config.batch_size == 4


def test_cli_types() -> None:
    config = parse_config(
        FinetuneConfig,
        ["--batch_size", "16", "--learning_rate", "2e-5", "--unfreeze_layers", "2", "--train_file", "x.csv"],
    )
    assert config.batch_size == 16 and isinstance(config.batch_size, int)
    assert config.learning_rate == pytest.approx(2e-5) and isinstance(config.learning_rate, float)
    assert config.unfreeze_layers == 2
    assert config.train_file == "x.csv"


def test_list_flags() -> None:
    config = parse_config(FinetuneConfig, ["--metrics", "accuracy", "f1_macro", "--layers", "-2", "-1"])
    assert config.metrics == ["accuracy", "f1_macro"]
    assert config.layers == [-2, -1]
    assert all(isinstance(layer, int) for layer in config.layers)


def test_single_list_value() -> None:
    assert parse_config(FinetuneConfig, ["--layers", "-1"]).layers == [-1]


def test_list_flag_overrides_yaml_list(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "metrics: [accuracy, f1_macro, recall_macro]\nlayers: [-4, -3, -2, -1]\n")
    config = parse_config(FinetuneConfig, ["--config", path, "--metrics", "accuracy"])
    assert config.metrics == ["accuracy"]
    assert config.layers == [-4, -3, -2, -1]


def test_bool_flags(tmp_path: Path) -> None:
    assert parse_config(FinetuneConfig, ["--overwrite_output_dir"]).overwrite_output_dir is True
    assert parse_config(FinetuneConfig, ["--no-overwrite_output_dir"]).overwrite_output_dir is False
    path = _yaml(tmp_path, "overwrite_output_dir: true\ncpu: true\n")
    from_yaml = parse_config(FinetuneConfig, ["--config", path])
    assert from_yaml.overwrite_output_dir is True and from_yaml.cpu is True
    # --no-flag on the command line must beat `true` in the YAML file.
    overridden = parse_config(FinetuneConfig, ["--config", path, "--no-overwrite_output_dir"])
    assert overridden.overwrite_output_dir is False
    assert overridden.cpu is True


def test_bool_flag_takes_no_value() -> None:
    with pytest.raises(SystemExit):
        parse_config(FinetuneConfig, ["--overwrite_output_dir", "yes"])


def test_unknown_cli_flag_exits() -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(FinetuneConfig, ["--batchsize", "8"])
    assert info.value.code == 2


def test_bad_cli_type_exits(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config(FinetuneConfig, ["--batch_size", "abc"])
    assert "--batch_size: invalid int value: 'abc'" in capsys.readouterr().err


def test_unknown_yaml_key_suggests(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "batchsize: 8\n")
    with pytest.raises(ConfigError) as info:
        parse_config(FinetuneConfig, ["--config", path])
    message = str(info.value)
    assert "Unknown option 'batchsize'" in message
    assert "Did you mean 'batch_size'?" in message
    assert isinstance(info.value, ValueError)


def test_unknown_yaml_key_without_close_match(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "zzzzzz: 1\n")
    with pytest.raises(ConfigError, match="Unknown option 'zzzzzz'") as info:
        parse_config(FinetuneConfig, ["--config", path])
    assert "Did you mean" not in str(info.value)


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(FinetuneConfig, ["--config", str(tmp_path / "nope.yaml")])


def test_yaml_not_a_mapping(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "- batch_size\n- 8\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        parse_config(FinetuneConfig, ["--config", path])


def test_empty_yaml_gives_defaults(tmp_path: Path) -> None:
    assert parse_config(FinetuneConfig, ["--config", _yaml(tmp_path, "")]) == FinetuneConfig()


def test_yaml_values_typed_like_cli_flags(tmp_path: Path) -> None:
    # PyYAML reads 2e-5 (no dot) as a string; a scalar for a list option means a one-item list.
    path = _yaml(tmp_path, "learning_rate: 2e-5\nmetrics: accuracy\nlayers: -1\nbatch_size: '16'\n")
    config = parse_config(FinetuneConfig, ["--config", path])
    assert config.learning_rate == pytest.approx(2e-5) and isinstance(config.learning_rate, float)
    assert config.metrics == ["accuracy"]
    assert config.layers == [-1]
    assert config.batch_size == 16


@pytest.mark.parametrize(
    ("text", "option"),
    [
        ("batch_size: abc\n", "batch_size"),
        ("learning_rate: fast\n", "learning_rate"),
        ("cpu: maybe\n", "cpu"),
        ("batch_size: 1.5\n", "batch_size"),
    ],
)
def test_yaml_wrong_type(tmp_path: Path, text: str, option: str) -> None:
    with pytest.raises(ConfigError, match=f"Option '{option}'"):
        parse_config(FinetuneConfig, ["--config", _yaml(tmp_path, text)])


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--batch_size", "0"], "--batch_size"),
        (["--eval_batch_size", "0"], "--eval_batch_size"),
        (["--validation_split", "1.5"], "--validation_split"),
        (["--test_split", "-0.1"], "--test_split"),
        (["--mixed_precision", "fp8"], "--mixed_precision"),
        (["--unfreeze_layers", "-1"], "--unfreeze_layers"),
        (["--epochs", "0"], "--epochs"),
        (["--max_train_examples", "0"], "--max_train_examples"),
        (["--head_dropout", "1.0"], "--head_dropout"),
    ],
)
def test_invalid_values_name_the_flag(argv: list[str], flag: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(FinetuneConfig, argv)
    message = str(info.value)
    assert message.startswith(flag + " ")
    assert argv[1] in message or str(float(argv[1])) in message  # says what was given


def test_mixed_precision_lists_choices() -> None:
    with pytest.raises(ConfigError, match="no, fp16, bf16, got 'fp8'"):
        FinetuneConfig(mixed_precision="fp8")


def test_invalid_value_from_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--validation_split must be between 0\.0 and 0\.9, got 1\.5"):
        parse_config(FinetuneConfig, ["--config", _yaml(tmp_path, "validation_split: 1.5\n")])


def test_splits_that_leave_no_training_data() -> None:
    with pytest.raises(ConfigError, match="almost no training data"):
        FinetuneConfig(validation_split=0.5, test_split=0.5)


def test_valid_edge_values() -> None:
    config = FinetuneConfig(unfreeze_layers=0, validation_split=0.9, batch_size=1, mixed_precision="bf16")
    assert config.unfreeze_layers == 0 and config.validation_split == 0.9


def test_to_dict_and_save(tmp_path: Path) -> None:
    config = parse_config(FinetuneConfig, ["--batch_size", "8", "--layers", "-1"])
    data = config.to_dict()
    assert data["nlptransfer_version"] == __version__
    assert data["batch_size"] == 8 and data["layers"] == [-1]
    assert set(data) == {f.name for f in dataclasses.fields(FinetuneConfig)} | {"nlptransfer_version"}
    config.save(tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved == data
    # The saved options (minus the version) rebuild the same config.
    saved.pop("nlptransfer_version")
    assert FinetuneConfig(**saved) == config


# ---------------------------------------------------------------- sections


@pytest.mark.parametrize(
    ("section", "options", "pattern"),
    [
        ("DataOptions", {"validation_split": 0.95}, "--validation_split must be between"),
        ("DataOptions", {"samples_per_label": 8, "max_train_examples": 100}, "pass one"),
        ("AdapterOptions", {"lora_r": 0}, "--lora_r must be at least 1"),
        ("AdapterOptions", {"lora_dropout": 1.0}, r"--lora_dropout must be in \[0, 1\)"),
        ("AdapterOptions", {"num_virtual_tokens": 0}, "--num_virtual_tokens must be at least 1"),
        ("VocabularyOptions", {"oov": "guess"}, "--oov must be one of zero, random, subword"),
        ("TrainingOptions", {"batch_size": 0}, "--batch_size must be at least 1"),
    ],
)
def test_each_section_validates_itself_and_so_does_the_flat_config(
    section: str, options: dict, pattern: str
) -> None:
    import nlptransfer.config as config_module

    with pytest.raises(ConfigError, match=pattern):
        getattr(config_module, section)(**options)
    with pytest.raises(ConfigError, match=pattern):  # the command line's front door checks the same
        FinetuneConfig(**options)


def test_the_flat_config_is_its_sections_and_inner_code_gets_one() -> None:
    from nlptransfer.config import AdapterOptions, DataOptions, TextSource, TrainingOptions, VocabularyOptions
    from nlptransfer.runs.pretrain import PretrainConfig

    names = {f.name for f in dataclasses.fields(FinetuneConfig)}
    sections = (TrainingOptions, DataOptions, AdapterOptions, VocabularyOptions)
    for section in sections:
        assert {f.name for f in dataclasses.fields(section)} <= names
    config = FinetuneConfig(dataset="movie-reviews", lora_r=4, oov="random", seed=7, samples_per_label=8)
    assert config.data == DataOptions(dataset="movie-reviews", seed=7, samples_per_label=8)
    assert config.adapter == AdapterOptions(lora_r=4)
    assert config.vocabulary == VocabularyOptions(oov="random")
    # Pretraining reads its texts through the same section: the same fields, not copies.
    source = {f.name: f for f in dataclasses.fields(TextSource)}
    pretrain = {f.name: f for f in dataclasses.fields(PretrainConfig)}
    assert all(pretrain[name].metadata is source[name].metadata for name in source)
    # run_config.json keeps one flat set of keys, as before sections existed.
    assert set(config.to_dict()) == names | {"nlptransfer_version"}


def test_load_data_needs_only_the_data_section() -> None:
    from nlptransfer.config import DataOptions
    from nlptransfer.data import load_data

    section = load_data(DataOptions(max_train_examples=60, seed=3))
    whole = load_data(FinetuneConfig(max_train_examples=60, seed=3, strategy="finetune", lora_r=2))
    assert section.train.inputs == whole.train.inputs and section.validation.labels == whole.validation.labels


def test_help_groups_the_flags_by_section() -> None:
    from nlptransfer.config import build_parser

    text = build_parser(FinetuneConfig).format_help()
    for title in ("AdapterOptions:", "DataOptions:", "VocabularyOptions:", "TrainingOptions:"):
        assert title in text
    adapter = text.split("AdapterOptions:")[1].split("VocabularyOptions:")[0]
    assert "--lora_r" in adapter and "--num_virtual_tokens" in adapter and "--seed" not in adapter
