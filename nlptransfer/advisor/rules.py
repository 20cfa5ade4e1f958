"""The decision: data size x similarity to the source, then a compute check.

|                     | target familiar to the source | target unfamiliar |
|---------------------|-------------------------------|-------------------|
| small (< 100/class) | contrastive pairs, then a logistic-regression head | the same |
| medium (< 1000)     | feature extraction (top layers) | fine-tune all layers, body LR x 0.1 |
| large (>= 1000)     | fine-tune all layers, body LR x 0.1 | the same (more data moves the body further) |

Little data cannot move a big body by a classification loss without overfitting; pairs of
examples can (SetFit's idea): a few examples per class give hundreds of same/different pairs,
and the body learns to put a class's texts together before a head is fitted in closed form
(at 8, 16 and 64 examples per label of the movie reviews, 2 to 6 points over a frozen body,
docs/few-shot.md). Where pairs do not apply (regression, images, word vectors), a frozen body
with a head: on the top layers, or, when the target differs, on a learned mix of all of them
(lower layers are more general). On familiar text a frozen body with a
cross-validated head stays within a point or two of fine-tuning up to about a thousand
examples per class, at a small fraction of the cost (``compare`` on the movie reviews:
top-2 fine-tuning never led); with more, or a distant domain, every layer trains at
about 1/10 of the head's rate.
Then compute: the budget bounds the whole run, so training gets what is left of PLAN_SHARE of it
after loading and before testing. When the pick would not finish in that, it first runs fewer
epochs, as long as they still make ``MIN_STEPS`` optimizer steps (a few thousand examples learn more
from one pass of the whole body than from a frozen one); otherwise the next cheaper arm that fits is
chosen instead (LoRA, then fewer layers, then features).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from nlptransfer.advisor.arms import MIN_STEPS, Schedule, get_arm, schedule
from nlptransfer.advisor.compute import ComputeProfile
from nlptransfer.advisor.familiarity import Familiarity
from nlptransfer.advisor.profile import CHUNK_ABOVE_PCT, DataProfile
from nlptransfer.config import FinetuneConfig
from nlptransfer.runs.modelcard import command_line

SMALL, LARGE = 100, 1000  # examples of the smallest class
MATRIX = {
    ("small", "familiar"): "contrastive",
    ("small", "unfamiliar"): "contrastive",
    ("medium", "familiar"): "feature-extraction",
    ("medium", "unfamiliar"): "finetune",
    ("large", "familiar"): "finetune",
    ("large", "unfamiliar"): "finetune",
}
# When the pick does not apply to the model (e.g. top-2 layers of a bag of word vectors) or the task
# (contrastive pairs need classes): the closest arms that may, in order.
FALLBACK = ("finetune", "feature-extraction")
SMALL_FALLBACK = {"familiar": ("feature-extraction",),
                  "unfamiliar": ("feature-extraction-all-layers", "feature-extraction")}  # fmt: skip
# When the pick is too slow: cheaper arms, in the order they are tried.
CHEAPER = ["lora", "finetune-top2", "feature-extraction"]
# The estimate of a run varies by about 5% from one process to the next on a quiet machine (more
# under load): training is planned within this share of the budget.
PLAN_SHARE = 0.95


def size_class(per_label: int) -> str:
    return "small" if per_label < SMALL else "large" if per_label >= LARGE else "medium"


@dataclass
class Recommendation:
    arm: str
    size: str
    similarity: str
    epochs: int
    patience: int | None
    options: dict[str, Any]
    reasons: list[str] = field(default_factory=list)
    estimated_seconds: float | None = None
    command: str = ""
    # The reason (among ``reasons``) for a schedule longer than the arm's default, if any.
    schedule_reason: str | None = None
    # Fewer epochs than the schedule's, so that the arm fits the time budget; None: not shortened.
    budget_epochs: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def recommend(
    profile: DataProfile, familiarity: Familiarity, config: FinetuneConfig,
    compute: ComputeProfile | None = None, time_budget: float | None = None, spent: float = 0.0,
) -> Recommendation:  # fmt: skip
    """The arm the decision matrix picks for this data, with its schedule, reasons and command.
    ``time_budget``: seconds for the whole run, of which ``spent`` have gone (loading, measuring)."""
    size = size_class(profile.min_per_label)
    similarity = "unfamiliar" if familiarity.verdict == "unfamiliar" else "familiar"
    name = MATRIX[(size, similarity)]
    reasons = [_size_reason(profile, size), _similarity_reason(familiarity)]
    if name == "contrastive" and not (profile.modality == "text" and profile.has_classes):
        name = SMALL_FALLBACK[similarity][0]
        what = f"{profile.modality} inputs" if profile.has_classes else "a regression"
        reasons.append(f"contrastive pairs texts by their classes; {name} for {what}")
    runnable = name
    if compute is not None and name not in compute.costs:
        fallback = SMALL_FALLBACK[similarity] if size == "small" else FALLBACK
        runnable = next((a for a in fallback if a in compute.costs), name)
    if runnable != name:
        reasons.append(f"{name} does not apply to this model or data (too few layers, no LoRA support, "
                       f"or text pairs); {runnable} is the closest that does")  # fmt: skip
        name = runnable
    training, budget_reason = training_budget(time_budget, profile, compute, spent)
    name, budget_epochs = _fit_compute(name, profile, config, compute, training, reasons)
    if budget_reason and any(reason.startswith("compute:") for reason in reasons):
        reasons.insert(-1, budget_reason)
    arm = get_arm(name)
    plan = schedule(arm, profile.num_train, config.batch_size)
    if budget_epochs is not None:
        plan = Schedule(budget_epochs, None, plan.batch_size)
    seconds = _estimate(name, profile, compute, plan.epochs)
    schedule_reason = None
    if budget_epochs is None and (plan.epochs > arm.default_epochs or plan.batch_size < config.batch_size):
        schedule_reason = (
            f"batch size {plan.batch_size}, {plan.epochs} epochs: {profile.num_train} examples would give "
            "few optimizer steps with the defaults; early stopping ends the run when validation stops "
            "improving"
        )
        reasons.append(schedule_reason)
    options = {**arm.options, "epochs": plan.epochs, "batch_size": plan.batch_size}
    if plan.patience is not None:
        options["early_stopping_patience"] = plan.patience
    if (profile.truncated_pct or 0) >= CHUNK_ABOVE_PCT and not config.text_pair_column:
        options["long_text"] = "chunk"
        reasons.append(f"long texts: {profile.truncated_pct:.0f}% are longer than --max_length "
                       f"{profile.max_length} (median {profile.length_median:.0f} tokens); chunking reads "
                       "them whole")  # fmt: skip
    run = _run_config(config, options)
    return Recommendation(
        arm=name, size=size, similarity=similarity, epochs=plan.epochs, patience=plan.patience,
        options=options, reasons=reasons, estimated_seconds=seconds,
        command=command_line(run, "recipes/finetune.py"), schedule_reason=schedule_reason,
        budget_epochs=budget_epochs,
    )  # fmt: skip


def _size_reason(profile: DataProfile, size: str) -> str:
    n = profile.min_per_label
    if size == "small":
        return (f"small data: {n} examples in the smallest class (< {SMALL}); a classification loss on so "
                "few would overfit the body, pairs of them give it hundreds of examples")  # fmt: skip
    if size == "medium":
        return (
            f"medium data: {n} examples in the smallest class ({SMALL}-{LARGE - 1}): enough to adapt "
            "the top layers"
        )
    return f"large data: {n} examples in the smallest class (>= {LARGE}): enough to adapt every layer"


def _similarity_reason(familiarity: Familiarity) -> str:
    shown = ", ".join(
        f"{k} {v:g} ({familiarity.votes.get(k, 'no vote')})" for k, v in familiarity.signals.items()
    )
    if familiarity.verdict == "unknown":
        return f"similarity to the source not measured ({familiarity.source_kind}); assumed familiar"
    return f"target text {familiarity.verdict} to the source model: {shown}"


def training_budget(
    time_budget: float | None, profile: DataProfile, compute: ComputeProfile | None, spent: float = 0.0
) -> tuple[float | None, str | None]:
    """The training seconds a whole-run budget leaves: PLAN_SHARE of it, less what the run has spent
    and the test split's evaluation; with the reason that says so."""
    if time_budget is None or compute is None or not compute.costs:
        return time_budget, None
    per_example = next(iter(compute.costs.values())).eval_seconds_per_example
    test = profile.num_test * per_example
    left = max(0.0, PLAN_SHARE * time_budget - spent - test)
    reason = (
        f"budget: {time_budget:.0f} s for the whole run leaves {left:.0f} s to train ({spent:.0f} s spent "
        f"loading and measuring, about {test:.0f} s to test, {1 - PLAN_SHARE:.0%} kept for the estimate's "
        "error)"
    )
    return left, reason


def _fit_compute(
    name: str, profile: DataProfile, config: FinetuneConfig, compute: ComputeProfile | None,
    time_budget: float | None, reasons: list[str],
) -> tuple[str, int | None]:  # fmt: skip
    """The first arm of the pick's chain that fits the budget, with fewer epochs than its schedule
    (when that is what makes it fit) or None."""
    if compute is None or time_budget is None:
        return name, None
    chain = [name, *CHEAPER[CHEAPER.index(name) + 1 :]] if name in CHEAPER else [name, *CHEAPER]
    wanted = _arm_seconds(name, profile, config, compute)
    over = f"{name} would take about {wanted or 0:.0f} s, over the {time_budget:.0f} s left to train"
    for candidate in chain:
        if candidate not in compute.costs:  # does not apply to this model, or was not estimated
            continue
        seconds = _arm_seconds(candidate, profile, config, compute)
        if seconds is None or seconds <= time_budget:
            if candidate != name:
                reasons.append(f"compute: {over}; {candidate} fits (about {seconds or 0:.0f} s)")
            return candidate, None
        epochs = _epochs_within(candidate, profile, config, compute, time_budget)
        if epochs is not None:
            fits = _estimate(candidate, profile, compute, epochs) or 0
            arm = "" if candidate == name else f"{candidate}, "
            count = f"{epochs} epochs fit" if epochs > 1 else "1 epoch fits"
            reasons.append(f"compute: {over}; {arm}{count} (about {fits:.0f} s, at least {MIN_STEPS} "
                           "optimizer steps)")  # fmt: skip
            return candidate, epochs
    reasons.append(f"compute: nothing fits the {time_budget:.0f} s left to train; the cheapest arm is shown")
    return chain[-1], None


def _epochs_within(
    name: str, profile: DataProfile, config: FinetuneConfig, compute: ComputeProfile, time_budget: float
) -> int | None:
    """The most epochs of a gradient arm that fit the budget, when they are fewer than its schedule
    and still make MIN_STEPS optimizer steps; None otherwise."""
    cost = compute.costs[name]
    if cost.freezes_body:
        return None
    plan = schedule(get_arm(name), profile.num_train, config.batch_size)
    epochs = int(time_budget // cost.epoch_seconds(profile.num_train, profile.num_validation))
    steps = epochs * math.ceil(profile.num_train / plan.batch_size)
    return epochs if 1 <= epochs < plan.epochs and steps >= MIN_STEPS else None


def _arm_seconds(
    name: str, profile: DataProfile, config: FinetuneConfig, compute: ComputeProfile
) -> float | None:
    return _estimate(
        name, profile, compute, schedule(get_arm(name), profile.num_train, config.batch_size).epochs
    )


def _estimate(name: str, profile: DataProfile, compute: ComputeProfile | None, epochs: int) -> float | None:
    if compute is None or name not in compute.costs:
        return None
    return compute.costs[name].run_seconds(profile.num_train, profile.num_validation, epochs)


def _run_config(config: FinetuneConfig, options: dict[str, Any]) -> FinetuneConfig:
    """The user's run options (data, model, ...) with the recommended strategy options on top."""
    base = {f.name: getattr(config, f.name) for f in dataclasses.fields(FinetuneConfig)}
    for key in ("strategy", "unfreeze_layers", "body_lr_scale", "layers", "layer_mix", "epochs",
                "early_stopping_patience", "learning_rate", "batch_size"):  # fmt: skip
        base[key] = getattr(FinetuneConfig(), key)
    return FinetuneConfig(**{**base, **options})
