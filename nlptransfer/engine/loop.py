"""The step loop every recipe trains with, on accelerate.

Gradient accumulation, clipping, the learning-rate schedule, tracking, step and
epoch checkpoints, resuming in the middle of an epoch, and stopping cleanly on
Ctrl-C / SIGTERM live here once; classification phases, contrastive pairs and
language-model pretraining only say what a batch's loss is.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import RNG_STATE_NAME
from accelerate.utils import load as accelerate_load
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from nlptransfer.config import TrainingOptions
from nlptransfer.engine.checkpoint import (
    NOT_DAMAGE,
    Checkpoint,
    Checkpointable,
    Checkpointer,
    Progress,
    Snapshot,
    damaged_checkpoint,
)
from nlptransfer.engine.interrupt import InterruptGuard
from nlptransfer.engine.schedules import build_schedule
from nlptransfer.engine.sharding import wrap_blocks
from nlptransfer.engine.steps import (
    BATCH_INFO,
    BatchInfo,
    PendingSteps,
    StepPlace,
    StepValue,
    WithBatchInfo,
    set_skip_flag,
    skips_on_device,
)
from nlptransfer.errors import SaveError, TrainingError, TrainingInterrupted

if TYPE_CHECKING:
    from nlptransfer.engine.objectives import Objective

logger = logging.getLogger(__name__)


class EpochEnd(Protocol):
    """The hook that ends each epoch of a phase: validate and record it."""

    def on_epoch_end(self, train_loss: float) -> bool:
        """Record the epoch (mean training loss given); True stops the phase early."""
        ...


@dataclass
class TrainSession:
    """What the step loop shares over a whole run: progress, checkpoints, tracking, interruption."""

    accelerator: Accelerator
    options: TrainingOptions
    checkpointer: Checkpointer | None
    guard: InterruptGuard = field(default_factory=InterruptGuard)
    progress: Progress = field(default_factory=Progress)
    # Set when resuming, until the phase it was saved in has loaded its accelerator state.
    resume: Checkpoint | None = None
    # The fit state each checkpoint saves besides accelerate's (see register_for_checkpointing).
    state: Checkpointable | None = None
    last_checkpoint: Path | None = None
    # Parameters that have trained so far (None: all). The others still hold the
    # values a rebuilt model gets (source weights, seeded initialisation), so
    # checkpoints leave them out: a frozen body or a LoRA base costs no disk.
    trained_params: set[str] | None = None
    # Step values not read from the device yet, and the loss and throughput since the last log line.
    steps: PendingSteps = field(default_factory=PendingSteps)
    window: _Window = field(default_factory=lambda: _Window())

    def __post_init__(self) -> None:
        self.accelerator.register_save_state_pre_hook(self._drop_untrained)

    def _drop_untrained(self, models: list[Any], weights: list[dict[str, Any]], output_dir: str) -> None:
        if self.trained_params is None or not weights:  # FSDP saves its shards itself: no weights here
            return
        for model, state in zip(models, weights, strict=True):
            params = {name for name, _ in model.named_parameters()}
            for key in [k for k in state if k in params]:
                if key.removeprefix("module.") not in self.trained_params:
                    del state[key]

    @property
    def show_progress(self) -> bool:
        return self.accelerator.is_local_main_process

    def log(self, values: dict[str, float]) -> None:
        self.accelerator.log(values, step=self.progress.global_step)

    def register_for_checkpointing(self, state: Checkpointable) -> None:
        """Save ``state`` in every checkpoint; a resumed session loads it back right away."""
        self.state = state
        if self.resume is not None:
            state.load_state_dict(self.resume)

    def save_checkpoint(self) -> Path | None:
        # Read first: a non-finite step stops the run here, before its skipped update is saved.
        self.read_steps()
        if self.checkpointer is None:
            return None
        state, tensors, process_state = self.state.state_dict() if self.state else Snapshot({}, {}, {})
        self.progress.num_processes = self.accelerator.num_processes
        self.last_checkpoint = self.checkpointer.save(self.progress, state, tensors, process_state)
        return self.last_checkpoint

    def read_steps(self) -> list[float]:
        """Read the pending step values (one device sync), add the losses to the epoch's and the log
        window's sums, and stop if any value was not finite, on every process at once."""
        values = self.steps.read()
        bad = next((v for v in values if not math.isfinite(v.value)), None)
        elsewhere = False
        if self.accelerator.num_processes > 1:  # all processes read at the same steps
            flag = torch.tensor([float(bad is not None)], device=self.accelerator.device)
            elsewhere = bool(self.accelerator.reduce(flag, reduction="max").item())
        if bad is not None or elsewhere:
            raise _non_finite(self, bad, values)
        losses = [v.value for v in values if v.name == "loss"]
        for loss in losses:
            self.progress.epoch_loss_sum += loss
            self.window.loss += loss
        return losses

    def stop_requested(self, collective: bool = True) -> bool:
        """Whether any process got SIGINT/SIGTERM: all must stop at the same step.

        With several processes, asking is a collective read; ``collective=False`` (a step
        that reads nothing else) answers False there, and they ask at the next logging step.
        """
        flag = self.guard.requested
        if self.accelerator.num_processes > 1:
            if not collective:
                return False
            signal = torch.tensor([int(self.guard.received or 0)], device=self.accelerator.device)
            flag_value = int(self.accelerator.reduce(signal, reduction="max").item())
            if flag_value and self.guard.received is None:
                self.guard.received = flag_value
            flag = bool(flag_value)
        return flag

    def interrupt(self) -> None:
        signum = self.guard.received or 2
        where = f"epoch {self.progress.epoch}, optimizer step {self.progress.global_step}"
        try:
            path = self.save_checkpoint()
        except SaveError as err:
            # Still an interruption (exit code 128 + signal), with why no checkpoint was kept.
            message = f"Interrupted at {where}, but its checkpoint could not be saved. {err}"
            raise TrainingInterrupted(message, signum, None) from err
        if path is None:
            message = (
                f"Interrupted at {where}; checkpoints are off (--save_steps 0 and --no-save_every_epoch)."
            )
        else:
            message = (
                f"Interrupted at {where}; checkpoint saved in {path}. Resume by running the same "
                "command with --resume_from_checkpoint latest."
            )
        raise TrainingInterrupted(message, signum, str(path) if path else None)

    def _check_rng_state(self, path: Path) -> None:
        """Read this process's RNG file the way accelerate does (weights only), but let errors out.

        accelerate logs a missing, refused or damaged RNG file at INFO level and resumes
        anyway, which silently breaks the bitwise-identical resume (and hides a planted pickle).
        """
        rng_file = path / f"{RNG_STATE_NAME}_{self.accelerator.process_index}.pkl"
        if not rng_file.is_file():
            raise FileNotFoundError(f"its random-number state {rng_file.name} is missing")
        accelerate_load(rng_file, weights_only=True)  # with accelerate's safe numpy globals

    def load_resume_state(self) -> None:
        """Load model, optimizer, schedule and RNG: in the checkpoint's phase, after ``prepare``."""
        if self.resume is not None:
            # Not strict: parameters that had not trained were left out on purpose.
            try:
                self._check_rng_state(self.resume.path)
                self.accelerator.load_state(str(self.resume.path), strict=False)
            except NOT_DAMAGE:
                raise
            except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
                raise damaged_checkpoint(self.resume.path, err) from err
            logger.info("resumed from %s at %s", self.resume.path, self.progress)
            self.resume = None


@dataclass
class EpochPlan:
    """One phase's training: prepared objects, how many epochs, the objective and the epoch-end hook."""

    model: Any
    loader: DataLoader
    objective: Objective
    optimizer: Any
    scheduler: Any
    epochs: int
    hook: EpochEnd


def run_phase(
    session: TrainSession, model: torch.nn.Module, groups: Any, objective: Objective, epochs: int,
    hook: EpochEnd,
) -> None:  # fmt: skip
    """Train one phase: the objective's batches and loss, with AdamW over ``groups``.

    A closed-form objective is solved once instead (one "epoch" for the hook).
    """
    if objective.closed_form:
        hook.on_epoch_end(objective.solve(model))
        return
    loader = objective.loader()
    prepared, optimizer, loader, scheduler = prepare_phase(session, model, groups, loader, epochs)
    run_epochs(session, EpochPlan(prepared, loader, objective, optimizer, scheduler, epochs, hook))


def prepare_phase(
    session: TrainSession, model: torch.nn.Module, groups: Any, loader: DataLoader, epochs: int
) -> tuple[Any, Any, DataLoader, Any]:
    """AdamW + schedule over exactly the optimizer steps the phase takes, all prepared by accelerate.

    Each process steps once per ``gradient_accumulation_steps`` batches of its own
    shard (and at the end of every epoch); accelerate steps the schedule once per
    process for each optimizer step, hence the factor ``num_processes``.
    """
    accelerator, options = session.accelerator, session.options
    optimizer = adamw(groups)
    loader.collate_fn = WithBatchInfo(loader.collate_fn)
    if options.torch_compile and getattr(model, "_compiled_call_impl", None) is None:
        # In place, not accelerate's wrapper: the same parameter names in checkpoints and saved
        # models, and accelerate's process-wide state would keep the first run's choice.
        model.compile()
    # Page-locked batches copy to a GPU without the host waiting (accelerate copies non-blocking).
    loader.pin_memory = accelerator.device.type == "cuda"
    wrap_blocks(accelerator, model)
    prepared, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    per_epoch = math.ceil(len(loader) / options.gradient_accumulation_steps)
    steps = max(1, per_epoch * epochs * accelerator.num_processes)
    schedule = build_schedule(
        options.lr_scheduler, optimizer.optimizer, int(steps * options.warmup), steps, options.stlr_ratio
    )
    return prepared, optimizer, loader, accelerator.prepare(schedule)


def adamw(groups: Any) -> torch.optim.AdamW:
    """AdamW with its fused kernel where every parameter is a float tensor: one kernel per step
    instead of a loop over tensors (on 2 CPU cores, MiniLM's step takes 11 ms instead of 48 ms:
    `python scripts/bench/adamw.py`)."""
    params = [p for group in groups for p in (group["params"] if isinstance(group, dict) else [group])]
    return torch.optim.AdamW(groups, fused=all(p.is_floating_point() for p in params))


def run_epochs(session: TrainSession, plan: EpochPlan) -> None:
    """Train ``plan.epochs`` epochs from ``session.progress`` (a resumed run skips what it did)."""
    session.load_resume_state()
    progress = session.progress
    if progress.phase_done:
        return
    for epoch in range(progress.epoch, plan.epochs + 1):
        progress.epoch = epoch
        _train_one_epoch(session, plan)
        session.read_steps()
        stop = plan.hook.on_epoch_end(progress.epoch_loss_sum / max(progress.batch, 1))
        progress.epoch, progress.batch, progress.epoch_loss_sum = epoch + 1, 0, 0.0
        progress.phase_done = stop or epoch == plan.epochs
        epoch_checkpoint = plan.objective.checkpoint_every_epoch or progress.phase_done
        if session.options.save_every_epoch and epoch_checkpoint:
            session.save_checkpoint()
        if session.stop_requested():
            session.interrupt()
        if stop:
            return


def _train_one_epoch(session: TrainSession, plan: EpochPlan) -> None:
    accelerator, progress = session.accelerator, session.progress
    # accelerate's loader re-sets its sampler's epoch from its own counter, which
    # a resumed run (fresh loader, then a skipping copy) would get wrong: set both.
    if hasattr(plan.loader, "set_epoch"):
        plan.loader.set_epoch(progress.epoch)
    plan.objective.set_epoch(progress.epoch)
    skip = progress.batch
    if not skip and plan.objective.draws_global_seed:
        # Earlier releases' token loaders drew their worker seed from the global RNG at each
        # epoch start; drawing it here keeps their dropout masks, hence their results. A
        # resumed epoch skips it: the checkpoint's RNG state already follows that draw.
        torch.empty((), dtype=torch.int64).random_()
    # Skipping works on batch indices: the skipped examples are never loaded or collated.
    batches = accelerator.skip_first_batches(plan.loader, skip) if skip else plan.loader
    plan.model.train()
    params = [p for p in plan.model.parameters() if p.requires_grad]
    session.window = _Window()
    bar = tqdm(
        batches, desc=f"{plan.objective.desc} {progress.epoch}", total=len(plan.loader), initial=skip,
        disable=not session.show_progress, leave=False,
    )  # fmt: skip
    session.guard.in_training = True
    try:
        for batch in bar:
            info = batch.pop(BATCH_INFO, None)
            session.window.add(info, batch)
            if info is not None:
                plan.objective.observe(info.idx)
            with accelerator.accumulate(plan.model):
                loss = plan.objective.loss(plan.model, batch)
                accelerator.backward(loss)
                optimizer_step(session, params, plan.optimizer, plan.scheduler, loss)
            progress.batch += 1
            if accelerator.sync_gradients:
                _after_optimizer_step(session, plan, bar)
    finally:
        session.guard.in_training = False


def _after_optimizer_step(session: TrainSession, plan: EpochPlan, bar: tqdm) -> None:
    """Log, save and check for a stop request; only these steps read from the device."""
    options, progress = session.options, session.progress
    progress.global_step += 1
    logging = progress.global_step % options.logging_steps == 0
    saving = bool(options.save_steps) and progress.global_step % options.save_steps == 0
    if logging:
        session.read_steps()
        bar.set_postfix(loss=f"{progress.epoch_loss_sum / max(progress.batch, 1):.4f}", refresh=False)
        session.log(session.window.flush(plan, progress, session.accelerator.num_processes))
    if saving:
        session.save_checkpoint()
    if session.stop_requested(collective=logging or saving):
        session.interrupt()


class _Window:
    """Loss and throughput since the last log line."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.loss, self.batches, self.examples, self.tokens = 0.0, 0, 0, 0

    def add(self, info: BatchInfo | None, batch: dict[str, Any]) -> None:
        """Count a batch: from its host-side info (a batch built without it is counted, not its tokens)."""
        self.batches += 1
        self.examples += info.examples if info is not None else len(next(iter(batch.values())))
        self.tokens += info.tokens if info is not None else 0

    def flush(self, plan: EpochPlan, progress: Progress, processes: int) -> dict[str, float]:
        seconds = max(time.perf_counter() - self.start, 1e-9)
        values = {
            "train/loss": self.loss / max(self.batches, 1),
            "train/learning_rate": plan.scheduler.get_last_lr()[0],
            "train/epoch": progress.epoch - 1 + progress.batch / max(len(plan.loader), 1),
            "train/examples_per_second": self.examples * processes / seconds,
        }
        if self.tokens:
            values["train/tokens_per_second"] = self.tokens * processes / seconds
        self.__init__()
        return values


def optimizer_step(
    session: TrainSession, params: list[torch.nn.Parameter], optimizer: Any, scheduler: Any,
    loss: torch.Tensor | None = None,
) -> None:  # fmt: skip
    """Clip, then step optimizer and schedule, never applying an update after a non-finite value.

    Call inside ``accumulate``. The loss and the synced gradients' norm stay on the device
    (``session.read_steps`` reads them); fused AdamW skips the update on the device's say. Any
    other optimizer is checked on the host first: a device sync per step.
    """
    accelerator, progress, steps = session.accelerator, session.progress, session.steps
    place = StepPlace(progress.global_step + 1, progress.epoch, progress.batch + 1)
    # With several processes only the (all-reduced) gradients decide a skip, so that every
    # process skips together; each one's loss is still checked when read.
    alone = accelerator.num_processes == 1
    if loss is not None:
        steps.add("loss", loss, place, skips=alone)
    if not accelerator.sync_gradients:
        return
    norm = accelerator.clip_grad_norm_(params, session.options.max_grad_norm or float("inf"))
    # Under fp16, non-finite gradients are how the GradScaler detects an overflow: it
    # skips that step and lowers its scale, so only a non-finite loss stops the run.
    if norm is not None and accelerator.scaler is None:
        steps.add("gradients", norm, place, skips=True)
    if accelerator.scaler is None and skips_on_device(optimizer):
        set_skip_flag(optimizer, steps.skip)
    else:
        session.read_steps()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def _non_finite(session: TrainSession, bad: StepValue | None, values: list[StepValue]) -> TrainingError:
    """The error for the first non-finite value of ``values`` (None: it was on another process)."""
    step = session.progress.global_step
    if bad is None:
        what = f"The loss of another process became non-finite by step {step}"
    else:
        what = f"The {bad.name} became {bad.value} at {bad.place}"
    # Updates are skipped from a non-finite gradient norm on, and with one process from a
    # non-finite loss too; with several, a loss alone does not skip, lest they disagree.
    skipped = bad is not None and (
        session.accelerator.num_processes == 1
        or any(v.name == "gradients" and v.place == bad.place and not math.isfinite(v.value) for v in values)
    )
    if skipped:
        what += "; training stopped before that step changed the weights"
    else:
        what += f"; training stopped at step {step}"
    if session.last_checkpoint is not None:
        saved = f"The last good checkpoint is {session.last_checkpoint}."
    else:
        saved = "No checkpoint was saved before it."
    return TrainingError(
        f"{what}. Lower --learning_rate, or use --mixed_precision bf16/no if it was fp16. {saved}"
    )


__all__ = [
    "EpochEnd",
    "EpochPlan",
    "TrainSession",
    "optimizer_step",
    "prepare_phase",
    "run_epochs",
    "run_phase",
]
