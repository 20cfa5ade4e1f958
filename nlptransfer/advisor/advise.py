"""``nlptransfer advise``: measure the data, the domain gap and the compute, then recommend."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlptransfer.advisor.arms import get_arm, schedule
from nlptransfer.advisor.compute import ArmCost, ComputeProfile, add_derived_costs, probe_compute
from nlptransfer.advisor.familiarity import Familiarity, measure_familiarity, sample_texts
from nlptransfer.advisor.profile import DataProfile, profile_data
from nlptransfer.advisor.rules import Recommendation, recommend
from nlptransfer.config import FinetuneConfig, _opt
from nlptransfer.data import LabelledData, load_data
from nlptransfer.errors import ConfigError
from nlptransfer.model.transfer import TransferModel

logger = logging.getLogger(__name__)

# The arms whose cost the probe measures; feature extraction on all layers costs what it does on four.
PROBED_ARMS = ("feature-extraction", "finetune-top2", "finetune", "lora")


@dataclass
class AdviseConfig(FinetuneConfig):
    """``nlptransfer advise``: every ``train`` flag (model, data, batch size...) plus these."""

    familiarity_examples: int = _opt(
        100, "Texts sampled to measure the domain gap (perplexity, fragmentation)."
    )
    probe_steps: int = _opt(3, "Timed training steps per strategy (after one warm-up step).")
    advice_file: str | None = _opt(None, "Also write the measurements and the advice here (JSON).")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("familiarity_examples", "probe_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}.")


@dataclass
class Measurements:
    """Everything the advice rests on: measured once, reused for every label budget by ``compare``."""

    profile: DataProfile
    familiarity: Familiarity
    compute: ComputeProfile
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.profile.to_dict(),
            "familiarity": self.familiarity.to_dict(),
            "compute": dataclasses.asdict(self.compute),
            "measure_seconds": round(self.seconds, 2),
        }


def measure(
    config: FinetuneConfig, familiarity_examples: int = 100, probe_steps: int = 3,
    data: LabelledData | None = None,
) -> Measurements:  # fmt: skip
    """Profile the data, measure the source's familiarity with it, and time each probed arm."""
    from nlptransfer.runs.finetune import plan_run, texts_for_vocabulary
    from nlptransfer.strategies import get_strategy
    from nlptransfer.tasks.setup import configure_task

    start = time.perf_counter()
    data = data or load_data(config.data)
    # The probe times the arms' own options, not the user's head or layer choices.
    probe_config = dataclasses.replace(
        config,
        strategy="finetune",
        unfreeze_layers=None,
        layers=None,
        layer_mix=None,
        head=None,
        reinit_layers=0,
    )
    texts = texts_for_vocabulary(data)
    _, task, _ = configure_task(probe_config, data)
    base = plan_run(
        probe_config, get_strategy("finetune"), data.label_names, texts, data.modality, task
    ).model
    profile = profile_data(data, base.backbone, config.max_length, config.seed)
    sample = sample_texts(data.train.inputs, familiarity_examples, config.seed) if texts else []
    familiarity = measure_familiarity(
        config.model,
        sample,
        config.trust_remote_code,
        config.word_lowercase,
        config.allow_pickle,
        data.modality,
    )
    arms = [get_arm(name) for name in PROBED_ARMS if _applies(name, base)]
    compute = probe_compute(base, probe_config, data, arms, probe_steps)
    compute = add_derived_costs(compute, base.backbone.num_blocks() > 0 and not config.text_pair_column)
    return Measurements(profile, familiarity, compute, time.perf_counter() - start)


def _applies(arm: str, base: TransferModel) -> bool:
    """Arms this backbone can run: top-2 needs two blocks; LoRA needs a transformers body."""
    from nlptransfer.backbones import HFBackbone

    if arm == "finetune-top2":
        return base.backbone.num_blocks() >= 2
    if arm == "lora":
        return isinstance(base.backbone, HFBackbone)
    return True


def advise(config: AdviseConfig) -> tuple[Measurements, Recommendation]:
    run = config.run_config()
    measured = measure(run, config.familiarity_examples, config.probe_steps)
    advice = recommend(measured.profile, measured.familiarity, run, measured.compute, run.time_budget_seconds)
    if config.advice_file:
        record = {**measured.to_dict(), "recommendation": advice.to_dict(), "config": run.to_dict()}
        Path(config.advice_file).write_text(json.dumps(record, indent=2))
    return measured, advice


def render(measured: Measurements, advice: Recommendation, config: FinetuneConfig) -> str:
    """The report ``nlptransfer advise`` prints: the numbers, the pick, why, and the command."""
    p, f, c = measured.profile, measured.familiarity, measured.compute
    lines = [
        "## Data",
        f"- {p.num_train} training examples, {p.num_validation} validation, {p.num_test} test",
    ]
    lines.append("- per label: " + ", ".join(f"{k}: {v}" for k, v in p.per_label.items())
                 + f" (largest / smallest: {p.imbalance:.2f})")  # fmt: skip
    if p.length_median is not None:
        lines.append(f"- tokens per text: median {p.length_median:.0f}, 95th percentile {p.length_p95:.0f}; "
                     f"{p.truncated_pct:.1f}% longer than --max_length {p.max_length}")  # fmt: skip
    lines += [f"- note: {n}" for n in p.notes]
    lines += ["", f"## Familiarity of the text to `{config.model}` ({f.sample_size} texts sampled)"]
    lines += [f"- {k}: {v:g} ({f.votes.get(k, 'no vote')})" for k, v in f.signals.items()]
    lines += [f"- note: {n}" for n in f.notes]
    lines.append(f"- verdict: **{f.verdict}**")
    lines += ["", f"## Compute ({c.device}, {c.threads} threads)", _cost_table(c.costs, p, config)]
    lines += ["", f"## Recommendation: `{advice.arm}`", *[f"- {r}" for r in advice.reasons]]
    if advice.estimated_seconds is not None:
        lines.append(f"- estimated training time: about {_duration(advice.estimated_seconds)}")
    lines += ["", "Run it with:", "", f"    {advice.command}"]
    return "\n".join(lines)


def _cost_table(costs: dict[str, ArmCost], profile: DataProfile, config: FinetuneConfig) -> str:
    rows = ["| arm | trainable parameters | one epoch | epochs | estimated run |", "|---|---|---|---|---|"]
    for name, cost in costs.items():
        epochs = schedule(get_arm(name), profile.num_train, config.batch_size).epochs
        epoch = cost.epoch_seconds(profile.num_train, profile.num_validation)
        total = cost.run_seconds(profile.num_train, profile.num_validation, epochs)
        shown = "features once" if cost.freezes_body else _duration(epoch)
        rows.append(f"| {name} | {cost.trainable_parameters:,} of {cost.total_parameters:,} | {shown} | "
                    f"{epochs} | {_duration(total)} |")  # fmt: skip
    return "\n".join(rows)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
