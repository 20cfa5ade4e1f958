"""The strategy advisor (`nlptransfer advise`) and the comparison sweep (`nlptransfer compare`)."""

from __future__ import annotations

import dataclasses
import json
import sys

import pandas as pd
import pytest
import torch
from conftest import REPO, _tiny_config, _tiny_tokenizer, run_script, sentiment_frame

from nlptransfer import FinetuneConfig
from nlptransfer.advisor import (
    ARMS,
    DataProfile,
    Familiarity,
    get_arm,
    measure,
    measure_familiarity,
    recommend,
    render,
    schedule,
    size_class,
)
from nlptransfer.advisor.compute import ArmCost, ComputeProfile
from nlptransfer.advisor.profile import ALL_TARGETS
from nlptransfer.cli import main
from nlptransfer.comparison import CompareConfig, cell_config, plan
from nlptransfer.data import load_data
from nlptransfer.errors import ConfigError, UnknownNameError


def _profile(per_label: int, labels: int = 2) -> DataProfile:
    counts = {f"label{i}": per_label for i in range(labels)}
    return DataProfile(num_train=per_label * labels, num_validation=100, num_test=100, per_label=counts)


def _familiar() -> Familiarity:
    known = Familiarity("subword", 50)
    known.add("subtokens_per_word", 1.1)
    return known


def _unfamiliar() -> Familiarity:
    far = Familiarity("subword", 50)
    far.add("subtokens_per_word", 2.4)
    return far


# ---------------------------------------------------------------- arms and schedules


def test_arms_resolve_presets_top_k_and_strategy_names():
    assert get_arm("finetune-top2").options == {"strategy": "finetune", "unfreeze_layers": 2}
    assert get_arm("finetune-top5").options["unfreeze_layers"] == 5
    assert get_arm("lp-ft").strategy == "lp-ft"
    with pytest.raises(UnknownNameError, match=r"Valid arms:.*finetune-top2.*Did you mean 'finetune-top2'"):
        get_arm("finetune-top")


def test_schedule_gives_small_data_enough_steps_and_early_stopping():
    tiny = schedule(get_arm("finetune"), num_train=16, batch_size=32, min_steps=250)
    assert (tiny.batch_size, tiny.epochs, tiny.patience) == (
        8,
        60,
        5,
    )  # 2 steps per epoch, capped at 60 epochs
    small = schedule(get_arm("finetune"), num_train=128, batch_size=32, min_steps=250)
    assert (small.batch_size, small.epochs) == (8, 16)  # 16 steps per epoch: 256 steps
    medium = schedule(get_arm("finetune"), num_train=1024, batch_size=32, min_steps=250)
    assert (medium.batch_size, medium.epochs) == (32, 8)
    large = schedule(get_arm("finetune"), num_train=10_000, batch_size=32, min_steps=250)
    assert (large.batch_size, large.epochs, large.patience) == (32, 2, None)  # the strategy's own defaults
    assert schedule(get_arm("lora"), 10_000, 32).epochs == 3  # the arm's preset beats the strategy's 5


# ---------------------------------------------------------------- the decision


@pytest.mark.parametrize(
    ("per_label", "familiar", "arm"),
    [
        (8, True, "contrastive"),
        (8, False, "contrastive"),
        (300, True, "feature-extraction"),
        (300, False, "finetune"),
        (5000, True, "finetune"),
        (5000, False, "finetune"),
    ],
)
def test_recommend_follows_the_size_by_similarity_matrix(per_label, familiar, arm):
    advice = recommend(_profile(per_label), _familiar() if familiar else _unfamiliar(), FinetuneConfig())
    assert advice.arm == arm
    assert advice.size == size_class(per_label)
    assert advice.similarity == ("familiar" if familiar else "unfamiliar")
    assert any("subtokens_per_word" in reason for reason in advice.reasons)  # shows the numbers it used
    for key, value in ARMS[arm].options.items():
        assert advice.options[key] == value


def test_recommendation_command_keeps_the_users_data_options_and_adds_the_strategy():
    config = FinetuneConfig(model="my-model", train_file="reviews.csv", text_column="review", strategy="lora")
    advice = recommend(_profile(300), _unfamiliar(), config)
    assert advice.command.startswith("accelerate launch recipes/finetune.py")
    for flag in (
        "--model my-model",
        "--train_file reviews.csv",
        "--text_column review",
        "--strategy finetune",
    ):
        assert flag in advice.command
    assert "--unfreeze_layers" not in advice.command  # all layers
    assert "lora" not in advice.command  # the user's own --strategy is replaced by the advice


def test_a_slow_pick_gives_way_to_a_cheaper_arm_within_the_time_budget():
    def cost(name: str, per_example: float, frozen: bool = False) -> ArmCost:
        return ArmCost(name, 1, 10, per_example, 0.001, frozen)

    costs = [cost("feature-extraction", 0.001, frozen=True), cost("finetune-top2", 0.01),
             cost("finetune", 0.1), cost("lora", 0.05)]  # fmt: skip
    compute = ComputeProfile("cpu", 2, {c.arm: c for c in costs})
    profile = _profile(5000)  # 10,000 examples: finetune ~ 2 x 1000 s, lora ~ 3 x 500 s, top-2 ~ 2 x 100 s
    unlimited = recommend(profile, _familiar(), FinetuneConfig(), compute)
    assert unlimited.arm == "finetune" and unlimited.estimated_seconds == pytest.approx(
        2 * (1000 + 0.1), rel=0.01
    )
    # One epoch of the pick fits (313 optimizer steps of 32): fewer epochs before a cheaper arm. The
    # budget is the whole run's: training plans within 95% of it, less testing (100 x 0.001 s).
    shortened = recommend(profile, _familiar(), FinetuneConfig(), compute, time_budget=1500)
    assert (shortened.arm, shortened.epochs, shortened.budget_epochs) == ("finetune", 1, 1)
    assert shortened.options["epochs"] == 1 and "--epochs 1" in shortened.command
    assert any("1 epoch fits" in r and "over the 1425 s left to train" in r for r in shortened.reasons)
    assert any(r.startswith("budget: 1500 s for the whole run leaves 1425 s") for r in shortened.reasons)
    cheaper = recommend(profile, _familiar(), FinetuneConfig(), compute, time_budget=600)
    assert (cheaper.arm, cheaper.epochs) == ("lora", 1)  # 3 x 500 s over, 1 x 500 s fits
    limited = recommend(profile, _familiar(), FinetuneConfig(), compute, time_budget=300)
    assert (limited.arm, limited.budget_epochs) == ("finetune-top2", None)
    assert any("over the 285 s left to train" in r for r in limited.reasons)
    # Fewer epochs that would make too few optimizer steps do not count as fitting.
    small = _profile(1500)  # 3,000 examples: 94 steps per epoch, 3 epochs to reach 250
    assert recommend(small, _familiar(), FinetuneConfig(), compute, time_budget=350).arm == "finetune-top2"


def test_familiarity_verdict_needs_one_unfamiliar_vote_and_reports_unknown_without_signals():
    mixed = Familiarity("subword")
    mixed.add("subtokens_per_word", 1.1)
    mixed.add("pseudo_perplexity", 500.0)
    assert mixed.votes == {"subtokens_per_word": "familiar", "pseudo_perplexity": "unfamiliar"}
    assert mixed.verdict == "unfamiliar"
    assert Familiarity("characters").verdict == "unknown"
    images = dataclasses.replace(_profile(8), modality="image")
    advice = recommend(images, Familiarity("image"), FinetuneConfig())
    assert advice.arm == "feature-extraction"  # contrastive pairs texts
    assert any("not measured" in r for r in advice.reasons)
    assert any("feature-extraction for image inputs" in r for r in advice.reasons)
    regression = DataProfile(num_train=16, num_validation=8, num_test=8, per_label={ALL_TARGETS: 16})
    assert recommend(regression, _familiar(), FinetuneConfig()).arm == "feature-extraction"


# ---------------------------------------------------------------- measurements


@pytest.fixture(scope="module")
def mlm_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny BERT saved with its masked-LM head (as bert-base-uncased is on the hub)."""
    from transformers import BertForMaskedLM

    folder = tmp_path_factory.mktemp("tiny-mlm")
    torch.manual_seed(0)
    tokenizer = _tiny_tokenizer()
    tokenizer.save_pretrained(folder)
    BertForMaskedLM(_tiny_config("bert", len(tokenizer))).save_pretrained(folder)
    return str(folder)


def test_fragmentation_tells_in_vocabulary_text_from_a_foreign_domain(tiny_bert):
    familiar = measure_familiarity(tiny_bert, sentiment_frame(40)["text"].tolist())
    assert familiar.signals["subtokens_per_word"] == pytest.approx(1.0)
    assert familiar.signals["unknown_token_pct"] == 0.0
    assert familiar.verdict == "familiar"
    foreign = ["phosphorylation of kinase substrates", "methyltransferase inhibitors suppress tumours"]
    far = measure_familiarity(tiny_bert, foreign)
    assert far.signals["subtokens_per_word"] > 5  # unknown words split into characters
    assert far.verdict == "unfamiliar"


def test_pseudo_perplexity_needs_a_trained_lm_head(tiny_bert, mlm_folder):
    texts = sentiment_frame(6)["text"].tolist()
    with_head = measure_familiarity(mlm_folder, texts)
    vocab = len(_tiny_tokenizer())
    # A random head scores near-uniform guesses: pseudo-perplexity close to the vocabulary size.
    assert 0.3 * vocab < with_head.signals["pseudo_perplexity"] < 3 * vocab
    headless = measure_familiarity(tiny_bert, texts)  # saved as AutoModel: no MLM head in the checkpoint
    assert "pseudo_perplexity" not in headless.signals
    assert any("no trained language-model head" in note for note in headless.notes)


def test_decoders_get_plain_perplexity(tmp_path):
    from transformers import GPT2LMHeadModel

    tokenizer = _tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    GPT2LMHeadModel(_tiny_config("gpt2", len(tokenizer))).save_pretrained(tmp_path)
    result = measure_familiarity(str(tmp_path), sentiment_frame(6)["text"].tolist())
    assert result.signals["perplexity"] > 1
    assert "pseudo_perplexity" not in result.signals


def test_word_vector_coverage(tmp_path):
    (tmp_path / "glove.txt").write_text("good 0.1 0.2\nbad 0.3 0.1\nmovie 0.0 0.5\n")
    result = measure_familiarity(f"glove:{tmp_path / 'glove.txt'}", ["good movie", "bad zzzz movie"])
    assert result.signals["vector_token_coverage_pct"] == pytest.approx(80.0)
    assert result.signals["vector_type_coverage_pct"] == pytest.approx(75.0)
    assert result.verdict == "unfamiliar"  # 80% of words covered: below the 85% line


def test_measure_profiles_data_and_times_every_arm(tiny_bert, tmp_path):
    frame = sentiment_frame(60)
    frame.loc[0, "text"] = " ".join(["good"] * 80)  # one text beyond --max_length 16
    frame.to_csv(tmp_path / "train.csv", index=False)
    config = FinetuneConfig(
        model=tiny_bert, train_file=str(tmp_path / "train.csv"), max_length=16, batch_size=8
    )
    measured = measure(config, familiarity_examples=20, probe_steps=1)
    profile = measured.profile
    assert sum(profile.per_label.values()) == profile.num_train == len(load_data(config).train)
    assert 0 < profile.truncated_pct < 10 and profile.length_p95 <= 16 < 80
    costs = measured.compute.costs
    assert set(costs) >= {"feature-extraction", "finetune-top2", "finetune", "lora"}
    trainable = {name: cost.trainable_parameters for name, cost in costs.items()}
    assert (
        trainable["feature-extraction"]
        < trainable["lora"]
        < trainable["finetune-top2"]
        < trainable["finetune"]
    )
    assert all(cost.train_seconds_per_example > 0 for cost in costs.values())
    text = render(measured, recommend(profile, measured.familiarity, config, measured.compute), config)
    assert costs["contrastive"].train_seconds_per_example == costs["finetune"].train_seconds_per_example
    for section in ("## Data", "## Familiarity", "## Compute", "## Recommendation: `contrastive`"):
        assert section in text


def test_validation_samples_per_label_keeps_k_per_label(sentiment_csv):
    config = FinetuneConfig(
        train_file=str(sentiment_csv), validation_split=0.5, validation_samples_per_label=3
    )
    data = load_data(config)
    assert len(data.validation) == 6
    assert sorted(pd.Series(data.validation.labels).value_counts().tolist()) == [3, 3]
    assert data.report["validation_samples_per_label"]["k"] == 3


# ---------------------------------------------------------------- command line, end to end


def test_advise_command_prints_the_advice_and_writes_json(tiny_bert, sentiment_csv, tmp_path, capsys):
    advice_file = tmp_path / "advice.json"
    code = main(["advise", "--model", tiny_bert, "--train_file", str(sentiment_csv), "--probe_steps", "1",
                 "--familiarity_examples", "10", "--advice_file", str(advice_file)])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "## Recommendation: `contrastive`" in out
    command = next(line.strip() for line in out.splitlines() if "recipes/finetune.py" in line)
    assert f"--model {tiny_bert}" in command and f"--train_file {sentiment_csv}" in command
    record = json.loads(advice_file.read_text())
    assert record["recommendation"]["arm"] == "contrastive"
    assert record["data"]["min_per_label"] == min(record["data"]["per_label"].values())
    assert record["familiarity"]["verdict"] == "familiar"


def test_compare_config_rejects_bad_input_with_the_fix():
    with pytest.raises(UnknownNameError, match="Unknown arm 'fine-tune'"):
        CompareConfig(arms=["fine-tune"])
    with pytest.raises(ConfigError, match="--budgets takes positive integers"):
        CompareConfig(budgets=["8", "lots"])
    with pytest.raises(ConfigError, match="use --budgets"):
        CompareConfig(samples_per_label=8)
    with pytest.raises(ConfigError, match="--validation_protocol must be one of k, full"):
        CompareConfig(validation_protocol="half")


def test_compare_plan_runs_one_seed_for_large_budgets_and_schedules_each_cell():
    config = CompareConfig(
        arms=["feature-extraction", "finetune"], budgets=["all", "8", "512"], seeds=[0, 1, 2]
    )
    cells = [(arm.name, k, seed) for arm, k, seed in plan(config)]
    assert len(cells) == 2 * 3 + 2 + 2
    assert cells[0][1] == 8 and cells[-1][1] is None  # cheapest budgets first
    assert {seed for _, k, seed in cells if k in (512, None)} == {0}


def test_compare_cell_config_sets_budget_validation_and_schedule(sentiment_csv, tmp_path):
    config = CompareConfig(train_file=str(sentiment_csv), batch_size=8)
    run = config.run_config()
    cell = cell_config(config, run, get_arm("finetune-top2"), 4, 1, tmp_path, num_train=8)
    assert (cell.samples_per_label, cell.validation_samples_per_label, cell.seed) == (4, 4, 1)
    assert (cell.strategy, cell.unfreeze_layers) == ("finetune", 2)
    assert (cell.batch_size, cell.epochs, cell.early_stopping_patience) == (8, 60, 5)
    assert cell.output_dir == str(tmp_path / "runs" / "finetune-top2-4-seed1")
    full = cell_config(CompareConfig(train_file=str(sentiment_csv), validation_protocol="full"), run,
                       get_arm("finetune"), None, 0, tmp_path, num_train=144)  # fmt: skip
    assert full.samples_per_label is None and full.validation_samples_per_label is None


def test_compare_writes_a_report_and_resumes_without_rerunning(tiny_bert, tmp_path, monkeypatch):
    frame = sentiment_frame(120)
    frame.to_csv(tmp_path / "train.csv", index=False)
    out = tmp_path / "compare"
    argv = ["compare", "--model", tiny_bert, "--train_file", str(tmp_path / "train.csv"),
            "--output_dir", str(out), "--arms", "feature-extraction", "finetune", "--budgets", "4", "all",
            "--seeds", "0", "1", "--batch_size", "8", "--min_steps", "4", "--probe_steps", "1",
            "--familiarity_examples", "10"]  # fmt: skip
    assert main(argv) == 0
    cells = json.loads((out / "cells.json").read_text())
    # 2 arms x (2 seeds at 4 per label + 1 seed on all the data)
    assert len(cells) == 6
    assert {(c["arm"], c["budget"]) for c in cells} == {
        (a, b) for a in ("feature-extraction", "finetune") for b in ("4", "all")
    }
    assert all(c["num_train"] == 8 for c in cells if c["budget"] == "4")
    report = (out / "report.md").read_text()
    assert "| feature-extraction |" in report and "★" in report
    assert "The advisor's pick against the measured best" in report
    assert "accelerate launch recipes/compare.py" in report
    assert (out / "compare.png").stat().st_size > 10_000
    first = {(c["arm"], c["budget"], c["seed"]): c["score"] for c in cells}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("nlptransfer.runs.finetune.train", no_training)
    assert main(argv) == 0  # every run is reused from its folder
    again = json.loads((out / "cells.json").read_text())
    assert {(c["arm"], c["budget"], c["seed"]): c["score"] for c in again} == first
    # An interrupted run (no completion marker) is run again; the others are reused.
    (out / "runs" / "finetune-4-seed1" / "compare_cell.json").unlink()
    monkeypatch.undo()
    assert main(argv) == 0
    assert len(json.loads((out / "cells.json").read_text())) == 6


def test_recipe_compare_runs_the_compare_command():
    result = run_script([sys.executable, str(REPO / "recipes" / "compare.py"), "--help"])
    assert result.returncode == 0, result.stderr[-2000:]
    for flag in ("--arms", "--budgets", "--one_seed_from", "--validation_protocol", "--train_file"):
        assert flag in result.stdout


def test_compare_refuses_an_arm_the_model_cannot_run_before_training(tiny_bert, sentiment_csv, tmp_path,
                                                                      capsys, monkeypatch):  # fmt: skip
    def no_training(*args, **kwargs):
        raise AssertionError("nothing may train when an arm cannot run")

    monkeypatch.setattr("nlptransfer.runs.finetune.train", no_training)
    code = main(["compare", "--model", tiny_bert, "--train_file", str(sentiment_csv), "--output_dir",
                 str(tmp_path / "cmp"), "--arms", "feature-extraction", "finetune-top5", "--budgets", "4",
                 "--probe_steps", "1", "--familiarity_examples", "5"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "arm 'finetune-top5' cannot run on this model" in err and "--unfreeze_layers 5 exceeds" in err


def test_word_vectors_get_coverage_and_an_arm_they_can_run(tmp_path):
    words = [
        "good",
        "great",
        "bad",
        "awful",
        "the",
        "a",
        "movie",
        "film",
        "plot",
        "acting",
        "was",
        "is",
        "and",
    ]
    (tmp_path / "glove.txt").write_text(
        "\n".join(f"{w} {i / 10:.1f} {1 - i / 10:.1f}" for i, w in enumerate(words))
    )
    frame = sentiment_frame(600)
    frame.to_csv(tmp_path / "train.csv", index=False)
    config = FinetuneConfig(model=f"glove:{tmp_path / 'glove.txt'}", train_file=str(tmp_path / "train.csv"))
    measured = measure(config, familiarity_examples=50, probe_steps=1)
    assert measured.familiarity.source_kind == "word-vectors"
    assert 0 < measured.familiarity.signals["vector_token_coverage_pct"] < 100
    assert "finetune-top2" not in measured.compute.costs and "lora" not in measured.compute.costs
    advice = recommend(measured.profile, _familiar(), config, measured.compute)  # medium data, familiar
    assert advice.arm == "feature-extraction"


def test_advice_chunks_long_texts_when_a_fifth_are_cut():
    long = dataclasses.replace(_profile(300), max_length=128, length_median=656.0, truncated_pct=97.3)
    advice = recommend(long, _familiar(), FinetuneConfig())
    assert advice.options["long_text"] == "chunk" and "--long_text chunk" in advice.command
    assert any("97% are longer than --max_length 128 (median 656 tokens)" in r for r in advice.reasons)
    short = dataclasses.replace(long, truncated_pct=12.0)
    assert "long_text" not in recommend(short, _familiar(), FinetuneConfig()).options
