"""``--strategy auto``, and every option a run leaves unset, chosen for the data in a second or two.

Auto reads what ``advise`` reads that is cheap: the sizes, examples per class, balance and token
lengths of the data, the tokenizer's fragmentation of it (familiarity without a language-model
pass), and, only when the rules would train the body, a second of timed inference to estimate what
that costs here. The decision is ``advise``'s (:func:`nlptransfer.advisor.rules.recommend`); auto
adds the head, the schedule, pair and long-text handling, and the validation protocol. Every
option the user gives wins; the choice, the numbers and the reasons go to the log, results.json
(``auto``) and the model card.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from nlptransfer.advisor.arms import Arm, get_arm, schedule
from nlptransfer.advisor.compute import add_derived_costs, estimate_compute
from nlptransfer.advisor.familiarity import Familiarity, measure_familiarity, sample_texts
from nlptransfer.advisor.profile import CHUNK_ABOVE_PCT, DataProfile, profile_data
from nlptransfer.advisor.rules import MATRIX, recommend, size_class
from nlptransfer.backbones import Backbone, is_word_vector_source
from nlptransfer.config import FinetuneConfig
from nlptransfer.data import LabelledData
from nlptransfer.errors import ConfigError, NLPTransferError
from nlptransfer.model.transfer import TransferModel
from nlptransfer.strategies import get_strategy
from nlptransfer.tasks.base import MultiLabelClassification, Regression, Task

logger = logging.getLogger(__name__)

AUTO = "auto"
# Texts whose tokenizer fragmentation auto measures (the advisor's default sample).
FAMILIARITY_TEXTS = 100
# A one-vs-rest closed-form head fits one cross-validated regression per label: past this many
# labels the gradient-trained linear head is the faster one.
MAX_ONE_VS_REST_LABELS = 50
# --protocol auto cross-validates when the held-out validation split would hold fewer examples
# than this of some class (accuracy on 20 examples moves 5 points per example)...
MIN_VALIDATION_PER_CLASS = 20
# ... or, for a regression, fewer examples than this.
MIN_VALIDATION_EXAMPLES = 100
# Strategies whose --epochs count single-phase gradient epochs of the body: auto schedules those.
# The others keep their own defaults: feature extraction's 30 epochs of a head on fixed features
# (with early stopping), and contrastive, gradual-unfreezing and lp-ft, which count epochs per phase.
SCHEDULED = ("finetune", "layerwise-lr-decay", "lora", "loha", "ia3", "prefix-tuning", "prompt-tuning")
_DEFAULTS = FinetuneConfig.__dataclass_fields__
# What the strategy pick sets.
STRATEGY_OPTIONS = ("strategy", "unfreeze_layers", "body_lr_scale", "layers", "layer_mix", "epochs",
                    "early_stopping_patience", "batch_size", "long_text")  # fmt: skip


@dataclass
class AutoChoice:
    """What auto set (option -> value), why, and the numbers it read."""

    chosen: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)
    estimated_seconds: float | None = None

    def set(self, options: dict[str, Any], name: str, value: Any, reason: str | None = None) -> None:
        options[name] = value
        self.chosen[name] = value
        if reason:
            self.reasons.append(reason)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flags(self) -> str:
        """What auto chose, as the command-line flags that would choose it."""
        return " ".join(f"--{k} {_shown(v)}" for k, v in self.chosen.items())

    def render(self) -> str:
        """The block the run logs: the choice, the numbers and the reasons."""
        lines = [f"auto: {self.flags() or '(nothing left to choose)'}"]
        m = self.measurements
        if "num_train" in m:
            numbers = f"{m['num_train']} training examples, smallest class {m['min_per_label']}"
            if m.get("imbalance", 1) > 1.01:
                numbers += f", largest/smallest {m['imbalance']:.1f}"
            if m.get("length_median") is not None:
                numbers += (
                    f"; tokens per text: median {m['length_median']:.0f}, {m['truncated_pct']:.0f}% truncated"
                )
            lines.append(f"  data: {numbers}")
        lines += [f"  - {reason}" for reason in self.reasons]
        if self.estimated_seconds is not None:
            lines.append(f"  estimated training time: {self.estimated_seconds:.0f} s")
        return "\n".join(lines)


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def resolve_auto(
    config: FinetuneConfig, data: LabelledData, task: Task, backbone: Backbone,
    resumed: dict[str, Any] | None = None, started: float | None = None,
) -> tuple[FinetuneConfig, LabelledData, AutoChoice]:  # fmt: skip
    """The config with ``--strategy auto`` and the unset options chosen, the data as the chosen
    protocol uses it, and the choice with its reasons. ``resumed``: the resolved options of the run
    a resumed one continues; its strategy choice is kept (a timing estimate could differ now).
    ``started``: the run's ``time.time()`` at its start; the budget counts the whole run from it."""
    choice = AutoChoice()
    profile = profile_data(data, backbone, config.max_length, config.seed)
    choice.measurements = {
        k: v for k, v in profile.to_dict().items() if k not in ("notes", "per_label", "modality")
    }
    options: dict[str, Any] = {}
    if config.strategy == AUTO and resumed is not None:
        for name in STRATEGY_OPTIONS:
            if name in resumed and resumed[name] != getattr(config, name):
                choice.set(options, name, resumed[name])
        choice.reasons.append("resumed: the strategy the checkpointed run chose")
    elif config.strategy == AUTO:
        spent = time.time() - started if started is not None else 0.0
        _pick_strategy(config, data, task, backbone, profile, choice, options, spent)
    config = dataclasses.replace(config, **options)
    for pick in (_pick_head, _pick_schedule, _pick_text_handling):
        options = {}
        pick(config, task, data, backbone, profile, choice, options)
        config = dataclasses.replace(config, **options)
    config, data = _pick_protocol(config, data, choice)
    return config, data, choice


def _pick_strategy(
    config: FinetuneConfig, data: LabelledData, task: Task, backbone: Backbone, profile: DataProfile,
    choice: AutoChoice, options: dict[str, Any], spent: float = 0.0,
) -> None:  # fmt: skip
    familiarity = _quick_familiarity(config, data)
    choice.measurements["familiarity"] = familiarity.to_dict()
    size = size_class(profile.min_per_label)
    similarity = "unfamiliar" if familiarity.verdict == "unfamiliar" else "familiar"
    compute = None
    budget = config.time_budget_seconds
    if MATRIX[(size, similarity)] != "feature-extraction":  # only a trained body needs the estimate
        base = TransferModel.from_backbone(
            backbone, data.label_names, pooling=config.pooling, layers=[-1], max_length=config.max_length,
            task=task,
        )  # fmt: skip
        arms = [get_arm(name) for name in ("feature-extraction", "finetune")]
        pairs = backbone.num_blocks() > 0 and not config.text_pair_column
        compute = add_derived_costs(estimate_compute(base, config, data, arms), pairs)
    advice = recommend(profile, familiarity, config, compute, budget, spent)
    # The schedule is auto's own to choose (_pick_schedule), once the head is known.
    choice.reasons += [r for r in advice.reasons if r != advice.schedule_reason]
    choice.estimated_seconds = advice.estimated_seconds
    arm = get_arm(advice.arm)
    if backbone.num_blocks() == 0 and arm.strategy != "feature-extraction":
        choice.reasons.append("a bag of word vectors has no layers to adapt: its features are fixed")
        arm = get_arm("feature-extraction")
    arm = _given_strategy_options(config, arm, choice)
    if arm.strategy == "feature-extraction" and backbone.has_untrained_blocks:
        choice.set(options, "strategy", "finetune")
        choice.set(options, "unfreeze_layers", 1, "the word encoder on these vectors starts random, so it "
                   "trains (--unfreeze_layers 1) on the frozen vectors")  # fmt: skip
        return
    choice.set(options, "strategy", arm.strategy)
    for name in ("unfreeze_layers", "body_lr_scale", "layers"):
        value = arm.options.get(name, getattr(config, name))
        if getattr(config, name) == _DEFAULTS[name].default and value != getattr(config, name):
            choice.set(options, name, value)
    if arm.options.get("layer_mix") and config.layer_mix is None:
        # A learned mix needs gradient training; the closed-form head reads every layer side by side.
        mix = arm.options["layer_mix"] if _gradient_asked(config) else "concat"
        choice.set(options, "layer_mix", mix)
    if arm.name == advice.arm and advice.budget_epochs is not None and config.epochs is None:
        choice.set(options, "epochs", advice.budget_epochs)  # the reason: advice's compute line
    if arm.strategy != "feature-extraction" and config.batch_size == _DEFAULTS["batch_size"].default:
        batch = advice.options["batch_size"]
        if batch != config.batch_size:
            choice.set(options, "batch_size", batch, f"batch size {batch}: {profile.num_train} examples "
                       "make few optimizer steps in batches of 32")  # fmt: skip
    if advice.options.get("long_text") == "chunk" and config.long_text is None and backbone.reads_windows:
        choice.set(options, "long_text", "chunk")


def _given_strategy_options(config: FinetuneConfig, arm: Arm, choice: AutoChoice) -> Arm:
    """Options the user gave that only one strategy serves decide it (every given flag wins)."""
    if config.head in ("logistic-cv", "ridge-cv") and arm.strategy != "feature-extraction":
        choice.reasons.append(f"--head {config.head} fits on frozen features: feature-extraction")
        return get_arm("feature-extraction")
    if config.unfreeze_layers is not None and arm.strategy != "finetune":
        choice.reasons.append(f"--unfreeze_layers {config.unfreeze_layers} trains the top layers: finetune")
        return get_arm("finetune")
    return arm


def _quick_familiarity(config: FinetuneConfig, data: LabelledData) -> Familiarity:
    """The tokenizer's fragmentation of a sample of the text (no language-model pass)."""
    if data.modality != "text" or config.model.startswith("elmo:") or is_word_vector_source(config.model):
        result = Familiarity(data.modality if data.modality != "text" else "other")
        result.notes.append("auto measures familiarity for Hugging Face text models only; assumed familiar")
        return result
    sample = sample_texts(data.train.inputs, FAMILIARITY_TEXTS, config.seed)
    try:
        return measure_familiarity(config.model, sample, config.trust_remote_code, language_model=False)
    except (OSError, ValueError, NLPTransferError) as err:  # no tokenizer to read (a run's folder...)
        result = Familiarity("subword")
        result.notes.append(f"fragmentation not measured ({err}); assumed familiar")
        return result


def _gradient_asked(config: FinetuneConfig) -> list[str]:
    """The options the user gave that only a gradient-trained head uses."""
    return [
        f"--{n}"
        for n in ("epochs", "learning_rate", "early_stopping_patience")
        if getattr(config, n) is not None
    ]


def _pick_head(
    config: FinetuneConfig, task: Task, data: LabelledData, backbone: Backbone, profile: DataProfile,
    choice: AutoChoice, options: dict[str, Any],
) -> None:  # fmt: skip
    if config.head is not None or (config.strategy == "contrastive" and config.end_to_end):
        return
    if config.strategy not in ("feature-extraction", "contrastive"):
        options["head"] = "linear"  # the body trains with the head: a closed form cannot
        return
    # Contrastive's --epochs count pair epochs of the body: they ask nothing of its head.
    asked = _gradient_asked(config) if config.strategy == "feature-extraction" else []
    if asked:
        reason = f"linear head: {', '.join(asked)} asks for gradient training"
    elif config.layer_mix == "scalar" or (config.layers == ["all"] and config.layer_mix is None):
        reason = "linear head: the learned layer mix trains by gradient"
    elif isinstance(task, MultiLabelClassification) and len(data.label_names) > MAX_ONE_VS_REST_LABELS:
        reason = (f"linear head: {len(data.label_names)} labels (> {MAX_ONE_VS_REST_LABELS}) would take "
                  "one cross-validated regression each")  # fmt: skip
    else:
        head = task.closed_form_head
        what = "ridge regression" if isinstance(task, Regression) else "logistic regression"
        body = "the pair-tuned body's" if config.strategy == "contrastive" else "the frozen"
        choice.set(options, "head", head, f"{head} head: {what} on {body} features in closed form, "
                   "its regularisation chosen by cross-validation (seconds, no epochs to tune)")  # fmt: skip
        return
    choice.set(options, "head", "linear", reason)


def _pick_schedule(
    config: FinetuneConfig, task: Task, data: LabelledData, backbone: Backbone, profile: DataProfile,
    choice: AutoChoice, options: dict[str, Any],
) -> None:  # fmt: skip
    """Enough optimizer steps for a gradient run whose --epochs is unset (strategy defaults suit
    thousands of examples and end after a few dozen steps on hundreds)."""
    closed = config.head in ("logistic-cv", "ridge-cv")
    if config.epochs is not None or closed or config.strategy not in SCHEDULED:
        return
    plan = schedule(get_arm(config.strategy), profile.num_train, config.batch_size, shrink_batch=False)
    strategy = get_strategy(config.strategy)
    if plan.epochs > strategy.default_epochs:
        choice.set(options, "epochs", plan.epochs, f"{plan.epochs} epochs: {profile.num_train} examples in "
                   f"batches of {config.batch_size} give few optimizer steps in the strategy's default "
                   f"{strategy.default_epochs}; early stopping ends the run when validation stops "
                   "improving")  # fmt: skip
        if config.early_stopping_patience is None and plan.patience is not None:
            choice.set(options, "early_stopping_patience", plan.patience)


def _pick_text_handling(
    config: FinetuneConfig, task: Task, data: LabelledData, backbone: Backbone, profile: DataProfile,
    choice: AutoChoice, options: dict[str, Any],
) -> None:  # fmt: skip
    frozen = get_strategy(config.strategy).freezes_body(config)
    if config.text_pair_column and config.pair_encoding is None:
        encoding = "separate" if frozen else "joint"
        why = (
            "each text encoded alone, as bi-encoders read pairs: a frozen body never learnt joined pairs"
            if frozen
            else "one joined sequence: the body learns to read pairs"
        )
        choice.set(options, "pair_encoding", encoding, f"pair encoding {encoding}: {why}")
    if config.long_text is not None:
        return
    long = (profile.truncated_pct or 0) >= CHUNK_ABOVE_PCT
    if config.chunk_stride is not None or (long and not config.text_pair_column and backbone.reads_windows):
        reason = None if config.chunk_stride is not None else (
            f"long texts: {profile.truncated_pct:.0f}% are longer than --max_length {config.max_length} "
            f"(median {profile.length_median:.0f} tokens); chunking reads them whole"
        )  # fmt: skip
        choice.set(options, "long_text", "chunk", reason)
    else:
        options["long_text"] = "truncate"


def _pick_protocol(
    config: FinetuneConfig, data: LabelledData, choice: AutoChoice
) -> tuple[FinetuneConfig, LabelledData]:
    """Cross-validation instead of a tiny held-out split: the head's regularisation is chosen by
    k-fold on the training data (which takes the validation examples back), validation scores are
    out-of-fold."""
    closed = _fits_in_closed_form(config)
    tunes = data.problem_type == MultiLabelClassification.name  # thresholds are tuned on validation
    if config.protocol == "holdout" or (config.protocol == AUTO and not closed):
        return dataclasses.replace(config, protocol="holdout"), data
    if config.protocol == "cross-validation" and (not closed or tunes):
        raise ConfigError(
            "--protocol cross-validation fits a closed-form head on frozen features (--strategy "
            "feature-extraction --head logistic-cv or ridge-cv, or contrastive with its logistic-cv "
            "head) for single-label classification or regression; multi-label thresholds need a "
            "validation split. Use --protocol holdout."
        )
    if config.protocol == AUTO:
        given = config.validation_file or config.validation_samples_per_label
        small = None if given or tunes else _smallest_validation(data)
        if small is None:
            return dataclasses.replace(config, protocol="holdout"), data
        choice.reasons.append(
            f"protocol cross-validation: the validation split would hold {small}; the head's regularisation "
            "is chosen by 5-fold cross-validation on the training data, which takes the validation "
            "examples in too, and the validation scores are out-of-fold"
        )
        choice.chosen["protocol"] = "cross-validation"
    merged = dataclasses.replace(data, train=data.train.concat(data.validation), validation=None)
    return dataclasses.replace(config, protocol="cross-validation"), merged


def _fits_in_closed_form(config: FinetuneConfig) -> bool:
    """Whether no phase of the run is scored on validation but a closed-form head, which can be
    scored out-of-fold instead: feature extraction with such a head, or contrastive pairs (never
    scored) before one."""
    closed = config.head in ("logistic-cv", "ridge-cv")
    if config.strategy == "contrastive":
        return config.head in (None, "logistic-cv") and not config.end_to_end
    return closed and config.strategy == "feature-extraction"


def _smallest_validation(data: LabelledData) -> str | None:
    """What makes the validation split too small to choose by ("N examples of class X"), or None."""
    labels = data.validation.labels
    if data.problem_type == Regression.name:
        n = len(labels)
        return f"{n} examples (< {MIN_VALIDATION_EXAMPLES})" if n < MIN_VALIDATION_EXAMPLES else None
    counts = {name: 0 for name in data.label_names}
    for y in labels:
        counts[data.label_names[y]] += 1
    name = min(counts, key=counts.__getitem__)
    if counts[name] >= MIN_VALIDATION_PER_CLASS:
        return None
    return f"{counts[name]} examples of class '{name}' (< {MIN_VALIDATION_PER_CLASS})"
