"""Untrusted files: no code runs unless the user asks for it, and nothing is unpickled.

A saved model is a folder people download and share, so everything in it is
treated as untrusted input: its JSON may be tampered with, and the backbone's
``config.json`` may point at Python code (``auto_map``).
"""

from __future__ import annotations

import ast
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nlptransfer import ModelLoadError, TransferModel, load_backbone
from nlptransfer.cli import main as cli_main
from nlptransfer.model.transfer import BACKBONE_DIR, CONFIG_NAME

PACKAGE = Path(__file__).resolve().parents[1] / "nlptransfer"

# Importing this module is the "attack": it leaves a marker file behind.
EVIL_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("remote code ran")
from transformers import BertConfig, BertModel

class EvilConfig(BertConfig):
    model_type = "nlptransfer-evil"

class EvilModel(BertModel):
    config_class = EvilConfig
"""


@pytest.fixture
def saved(tiny_bert: str, tmp_path: Path) -> Path:
    torch.manual_seed(0)
    folder = tmp_path / "model"
    TransferModel.from_backbone(tiny_bert, ["neg", "pos"], max_length=16).save_pretrained(folder)
    return folder


@pytest.fixture
def isolated_modules_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers copies remote code into a modules cache; keep it out of the user's home."""
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))


def _plant_remote_code(folder: Path, flag_in_transfer_config: bool) -> Path:
    """Make the saved backbone ask transformers to import ``evil.py`` from the folder.

    Returns the marker file that importing it writes: it exists only if the code ran.
    """
    marker = folder.parent / "ran.txt"
    backbone = folder / BACKBONE_DIR
    (backbone / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    hf_config = json.loads((backbone / "config.json").read_text())
    hf_config["model_type"] = "nlptransfer-evil"  # no built-in class: only the remote one fits
    hf_config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (backbone / "config.json").write_text(json.dumps(hf_config))
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["backbone"]["trust_remote_code"] = flag_in_transfer_config
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    return marker


@pytest.mark.usefixtures("isolated_modules_cache")
def test_a_saved_flag_never_turns_remote_code_on(saved: Path) -> None:
    marker = _plant_remote_code(saved, flag_in_transfer_config=True)
    with pytest.raises(ModelLoadError, match="--trust_remote_code"):
        TransferModel.from_pretrained(saved)
    with pytest.raises(ModelLoadError, match="--trust_remote_code"):
        load_backbone(str(saved))  # --model <a saved run> for a new run
    assert not marker.exists()
    # The user's explicit opt-in is what runs it: proof that the planted code is live.
    TransferModel.from_pretrained(saved, trust_remote_code=True)
    assert marker.read_text() == "remote code ran"


@pytest.mark.usefixtures("isolated_modules_cache")
def test_a_tampered_backbone_config_cannot_run_code(saved: Path) -> None:
    marker = _plant_remote_code(saved, flag_in_transfer_config=False)
    with pytest.raises(ModelLoadError, match="Could not rebuild the saved model"):
        TransferModel.from_pretrained(saved)
    assert not marker.exists()


@pytest.mark.usefixtures("isolated_modules_cache")
def test_predict_refuses_a_model_that_asks_for_remote_code(saved: Path, capsys) -> None:
    marker = _plant_remote_code(saved, flag_in_transfer_config=True)
    assert cli_main(["predict", "--model", str(saved), "--text", "good film"]) == 2
    assert "--trust_remote_code" in capsys.readouterr().err
    assert not marker.exists()
    assert cli_main(["predict", "--model", str(saved), "--text", "good film", "--trust_remote_code"]) == 0
    assert marker.exists()


def test_loading_from_the_hub_or_a_folder_never_trusts_code_by_default(
    tiny_bert: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoConfig

    seen: list[object] = []
    original = AutoConfig.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoConfig, "from_pretrained", spy)
    TransferModel.from_backbone(tiny_bert, ["neg", "pos"])
    assert seen and all(flag is False for flag in seen)


# A metric script as evaluate.load finds it (<folder>/<folder>.py); importing it is the attack.
EVIL_METRIC = """
from pathlib import Path
Path({marker!r}).write_text("metric code ran")
import datasets
import evaluate


class {cls}(evaluate.Metric):
    def _info(self):
        features = datasets.Features({{"predictions": datasets.Value("int64"),
                                       "references": datasets.Value("int64")}})
        return evaluate.MetricInfo(description="", citation="", inputs_description="", features=features)

    def _compute(self, predictions, references):
        return {{"{name}": sum(p == r for p, r in zip(predictions, references)) / len(predictions)}}
"""


def _plant_metric(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A local metric folder whose script writes a marker; returns (folder, marker)."""
    import evaluate.config

    # A cache an earlier evaluate.load put on sys.path would shadow the new one's evaluate_modules.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(evaluate.config.HF_MODULES_CACHE)])
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path / "hf_modules")
    for name in [m for m in sys.modules if m.startswith("evaluate_modules")]:
        monkeypatch.delitem(sys.modules, name)  # evaluate imports its modules cache as a package
    folder, marker = tmp_path / "some_folder", tmp_path / "metric-ran.txt"
    folder.mkdir()
    script = EVIL_METRIC.format(marker=str(marker), cls="SomeFolder", name="some_folder")
    (folder / "some_folder.py").write_text(script)
    return folder, marker


def test_a_metric_that_is_not_built_in_runs_only_with_trust_remote_code(
    tiny_bert: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from conftest import sentiment_frame

    metric, marker = _plant_metric(tmp_path, monkeypatch)
    sentiment_frame(40).to_csv(tmp_path / "train.csv", index=False)
    flags = ["train", "--model", tiny_bert, "--train_file", str(tmp_path / "train.csv"), "--epochs", "1",
             "--save_steps", "0", "--report_to", "none", "--metrics", "accuracy", str(metric)]  # fmt: skip
    out = tmp_path / "out"
    assert cli_main([*flags, "--output_dir", str(out)]) == 2
    error = capsys.readouterr().err
    assert "--trust_remote_code" in error and "built in: accuracy, f1_macro, f1_micro" in error
    assert not marker.exists() and not out.exists()
    # The same through a YAML config, and as --metric_for_best_model.
    (tmp_path / "run.yaml").write_text(f"metrics: [accuracy, {metric}]\nmetric_for_best_model: {metric}\n")
    yaml_flags = [*flags[:-3], "--config", str(tmp_path / "run.yaml"), "--output_dir", str(out)]
    assert cli_main(yaml_flags) == 2
    assert "--trust_remote_code" in capsys.readouterr().err and not marker.exists()
    # The explicit opt-in runs it: proof that the planted script is live.
    assert cli_main([*flags, "--output_dir", str(out), "--trust_remote_code"]) == 0
    assert marker.read_text() == "metric code ran"
    assert "some_folder" in json.loads((out / "results.json").read_text())["validation"]


def test_a_bare_metric_name_never_imports_a_folder_of_that_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate.load('some_folder') also finds ./some_folder in the working directory."""
    from nlptransfer.errors import UnknownNameError
    from nlptransfer.tasks.metrics import MetricSet

    _, marker = _plant_metric(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnknownNameError, match="--trust_remote_code"):
        MetricSet(["accuracy", "some_folder"])
    assert not marker.exists()
    assert MetricSet(["some_folder"], trust_remote_code=True).compute([1, 0], [1, 1]) == {"some_folder": 0.5}
    assert marker.exists()


# Loaders that unpickle unless told not to, and the keyword that makes each one safe.
_GUARDED = {("torch", "load"): ("weights_only", True), ("np", "load"): ("allow_pickle", False)}
_UNSAFE_MODULES = {"pickle", "cPickle", "joblib", "cloudpickle", "dill", "shelve", "marshal"}
_UNSAFE_KEYWORDS = {"trust_remote_code": True, "allow_pickle": True, "weights_only": False}


def _refuses_untrusted(function: ast.FunctionDef, before_line: int) -> bool:
    """Whether ``function`` takes ``trust_remote_code`` and raises when it is false, before a line."""
    if "trust_remote_code" not in {a.arg for a in function.args.args + function.args.kwonlyargs}:
        return False
    return any(
        isinstance(node, ast.If)
        and node.lineno < before_line
        and ast.unparse(node.test) == "not trust_remote_code"
        and isinstance(node.body[-1], ast.Raise)
        for node in function.body
    )


def _ungated_metric_loads(tree: ast.Module) -> list[str]:
    """``evaluate.load``/``combine`` runs a metric's script: only in a function that refuses untrusted."""
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "evaluate":
            problems += [f"imports evaluate.{a.name}" for a in node.names if a.name in ("load", "combine")]
    enclosing = {
        id(child): function
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef)
        for child in ast.walk(function)
    }  # inner functions come later in the walk, so the innermost one wins
    for node in ast.walk(tree):
        func = getattr(node, "func", None)
        if not (isinstance(func, ast.Attribute) and func.attr in ("load", "combine")):
            continue
        if ast.unparse(func.value).split(".")[0] != "evaluate":
            continue
        function = enclosing.get(id(node))
        if function is None or not _refuses_untrusted(function, node.lineno):
            problems.append(f"line {node.lineno}: {ast.unparse(func)} without a trust_remote_code gate")
    return problems


def _unsafe_uses(source: str) -> list[str]:
    """Unsafe deserialisation or code trust in ``source``, found in its syntax tree (not its strings)."""
    tree = ast.parse(source)
    problems = _ungated_metric_loads(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            problems += [f"imports {n}" for n in names if n.split(".")[0] in _UNSAFE_MODULES]
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("torch", "numpy"):
            # `from torch import load` would hide the call from the check below.
            problems += [f"imports {node.module}.load" for a in node.names if a.name == "load"]
        if not isinstance(node, ast.Call):
            continue
        keywords = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
        problems += [
            f"line {node.lineno}: {name}={value}"
            for name, value in _UNSAFE_KEYWORDS.items()
            if name in keywords and keywords[name] is value
        ]
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "read_pickle":
            problems.append(f"line {node.lineno}: read_pickle")
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "load"
            and ast.unparse(func.value).endswith("serialization")
        ):
            problems.append(f"line {node.lineno}: torch.serialization.load")
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            guard = _GUARDED.get(({"numpy": "np"}.get(func.value.id, func.value.id), func.attr))
            if guard and keywords.get(guard[0], not guard[1]) is not guard[1]:
                problems.append(
                    f"line {node.lineno}: {func.value.id}.{func.attr} without {guard[0]}={guard[1]}"
                )
    return problems


def test_the_package_never_unpickles_or_trusts_code_on_its_own() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20  # the scan must see the package, not an empty folder
    problems = [f"{file.relative_to(PACKAGE)} {p}" for file in files for p in _unsafe_uses(file.read_text())]
    assert problems == []


@pytest.mark.parametrize(
    "code",
    [
        "import pickle",
        "from joblib import load",
        "x = np.load(path, mmap_mode='r')",
        "x = numpy.load(path, allow_pickle=True)",
        "x = torch.load(f)",
        "x = torch.load(f, weights_only=False)",
        "m = AutoModel.from_pretrained(p, trust_remote_code=True)",
        "frame = pd.read_pickle(p)",
        "from torch import load",
        "from numpy import load as np_load",
        "state = torch.serialization.load(f)",
        "metric = evaluate.load(name)",
        "def load(name):\n    return evaluate.load(name)",
        "def load(name, trust_remote_code):\n    return evaluate.load(name)",
        "def load(name, trust_remote_code):\n    m = evaluate.load(name)\n"
        "    if not trust_remote_code:\n        raise ValueError(name)",
        "def load(name, trust_remote_code):\n    if not trust_remote_code:\n        print(name)\n"
        "    return evaluate.load(name)",
        "def f(names):\n    return evaluate.combine(names)",
        "from evaluate import load",
    ],
)
def test_the_scan_catches_each_unsafe_pattern(code: str) -> None:
    assert _unsafe_uses(code)


def test_the_scan_accepts_the_safe_forms() -> None:
    safe = "np.load(p, allow_pickle=False)\ntorch.load(f, weights_only=True)\nx = 'trust_remote_code=True'\n"
    gated = (
        "def load(name, trust_remote_code=False):\n    if not trust_remote_code:\n"
        "        raise ValueError(name)\n    return evaluate.load(name)\n"
    )
    assert _unsafe_uses(safe) == [] and _unsafe_uses(gated) == []


class _Payload:
    """Unpickling this object writes a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pickle code ran')",))


@pytest.mark.parametrize(
    "victim", ["random_states_0.pkl", "optimizer.bin", "trainer_state.json", "missing:random_states_0.pkl"]
)
def test_a_checkpoint_with_a_planted_pickle_or_a_missing_state_is_refused_on_resume(
    tiny_bert: str, tmp_path: Path, victim: str
) -> None:
    import pickle  # only to build the attack

    from conftest import sentiment_frame

    from nlptransfer.config import FinetuneConfig
    from nlptransfer.runs.finetune import train

    sentiment_frame(40).to_csv(tmp_path / "train.csv", index=False)
    config = FinetuneConfig(
        model=tiny_bert, train_file=str(tmp_path / "train.csv"), output_dir=str(tmp_path / "out"),
        epochs=1, batch_size=4, save_steps=5, save_total_limit=0, strategy="finetune",
    )  # fmt: skip
    train(config)
    checkpoints = tmp_path / "out" / "checkpoints"
    latest = max(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    marker = tmp_path / "ran.txt"
    payload = pickle.dumps(_Payload(marker))
    if victim.startswith("missing:"):
        # accelerate would resume with fresh random numbers: a different run, silently.
        (latest / victim.removeprefix("missing:")).unlink()
    elif victim.endswith(".json"):
        (latest / victim).write_text("{not json")  # a damaged state file, for comparison
    else:
        (latest / victim).write_bytes(payload)
    with pytest.raises(ModelLoadError, match="cannot be loaded") as caught:
        train(replace(config, resume_from_checkpoint="latest"))
    assert f"--resume_from_checkpoint {checkpoints / 'checkpoint-5'}" in str(caught.value)
    assert not marker.exists()
    # The planted pickle is live: plain pickle would run it.
    pickle.loads(payload)
    assert marker.exists()


def test_a_model_trained_with_remote_code_asks_for_the_same_opt_in_to_load(
    tiny_bert: str, tmp_path: Path
) -> None:
    from conftest import sentiment_frame

    from nlptransfer.config import FinetuneConfig
    from nlptransfer.runs.finetune import train

    sentiment_frame(40).to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "out"
    train(FinetuneConfig(model=tiny_bert, train_file=str(tmp_path / "train.csv"), output_dir=str(out),
                         epochs=1, save_steps=0, trust_remote_code=True))  # fmt: skip
    assert json.loads((out / CONFIG_NAME).read_text())["backbone"]["trust_remote_code"] is True
    assert "trust_remote_code=True" in (out / "README.md").read_text()  # the card's usage snippet
    with pytest.raises(ModelLoadError, match="--trust_remote_code"):
        TransferModel.from_pretrained(out)
    assert TransferModel.from_pretrained(out, trust_remote_code=True).predict(["fine"]).labels
