"""A short timed probe: what one epoch of each arm costs on this machine, with this data."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from nlptransfer.advisor.arms import Arm
from nlptransfer.config import FinetuneConfig
from nlptransfer.data import LabelledData
from nlptransfer.data.loaders import Collator, example_length
from nlptransfer.engine.context import set_cpu_threads
from nlptransfer.engine.inference import encode_split
from nlptransfer.engine.loop import adamw
from nlptransfer.model.layers import count_parameters
from nlptransfer.model.transfer import TransferModel
from nlptransfer.strategies import get_strategy

logger = logging.getLogger(__name__)


@dataclass
class ArmCost:
    arm: str
    trainable_parameters: int
    total_parameters: int
    # Seconds per training example for one optimizer pass (frozen arms: one forward pass, once).
    train_seconds_per_example: float
    eval_seconds_per_example: float
    freezes_body: bool

    def epoch_seconds(self, num_train: int, num_eval: int) -> float:
        """One epoch and one validation pass (frozen arms: extracting the features, done once)."""
        if self.freezes_body:
            return (num_train + num_eval) * self.eval_seconds_per_example
        return num_train * self.train_seconds_per_example + num_eval * self.eval_seconds_per_example

    def run_seconds(self, num_train: int, num_eval: int, epochs: int) -> float:
        if self.freezes_body:  # features once; head epochs on cached features cost next to nothing
            return self.epoch_seconds(num_train, num_eval)
        return epochs * self.epoch_seconds(num_train, num_eval)


@dataclass
class ComputeProfile:
    device: str
    threads: int
    costs: dict[str, ArmCost]


def probe_compute(
    base: TransferModel, config: FinetuneConfig, data: LabelledData, arms: list[Arm], steps: int = 3
) -> ComputeProfile:
    """Time ``steps`` training steps of each arm (after one warm-up step) on real training batches."""
    device = torch.device("cuda" if torch.cuda.is_available() and not config.cpu else "cpu")
    if device.type == "cpu":  # time with the threads training will use, not accelerate launch's one
        set_cpu_threads(config.num_threads, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    batches, size = _probe_batches(base, data, config, steps + 1, device)
    costs = {}
    eval_seconds = _time_inference(base.to(device), batches, size)
    for arm in arms:
        costs[arm.name] = _probe_arm(base, config, arm, batches, size, eval_seconds)
        logger.info(
            "probe %s: %.4f s per training example", arm.name, costs[arm.name].train_seconds_per_example
        )
    return ComputeProfile(str(device), torch.get_num_threads(), costs)


# A training step (forward, backward, fused AdamW) of a whole body costs about this many forward
# passes: on 2 CPU cores, two epochs of fine-tuning MiniLM on the 10,201 movie reviews trained in
# 259 s (validation included) where this estimate's forward pass took 3.3 ms a review: 3.7 passes
# (`accelerate launch recipes/finetune.py --time_budget_minutes 0`, docs/results.md).
TRAIN_PASSES_PER_FORWARD = 3.7
# Examples per timed batch; the first batches of a process run slower (allocator, thread pools), so
# the estimate times ESTIMATE_TIMED batches after ESTIMATE_WARMUP ones and keeps the median (its
# "timing estimate" log line: 3.3 to 3.6 ms a movie review in this session's quickstart runs).
ESTIMATE_EXAMPLES = 32
ESTIMATE_WARMUP = 2
ESTIMATE_TIMED = 8
# Training examples whose token counts give the mean length that length-grouped batches pad to.
ESTIMATE_LENGTH_SAMPLE = 512


def add_derived_costs(compute: ComputeProfile, pairs: bool) -> ComputeProfile:
    """The costs of arms that run like a measured one: feature extraction on a learned mix of all
    layers as on the top ones; contrastive (``pairs``: when the body has layers to tune and the
    examples are single texts) as full fine-tuning, since a pair epoch is one training pass of the
    whole body per example."""
    costs = compute.costs
    if "feature-extraction" in costs:
        costs["feature-extraction-all-layers"] = dataclasses.replace(
            costs["feature-extraction"], arm="feature-extraction-all-layers"
        )
    if pairs and "finetune" in costs:
        costs["contrastive"] = dataclasses.replace(costs["finetune"], arm="contrastive")
    return compute


def estimate_compute(
    base: TransferModel, config: FinetuneConfig, data: LabelledData, arms: list[Arm]
) -> ComputeProfile:
    """What ``probe_compute`` measures, estimated from inference alone (a second or two): batches of
    random training examples timed per token, counted at the mean token count of the training texts
    (training groups texts by length, so it pads little), a training step counted as
    TRAIN_PASSES_PER_FORWARD forward passes. Only arms that train the whole body or none of it are
    estimated."""
    device = torch.device("cuda" if torch.cuda.is_available() and not config.cpu else "cpu")
    if device.type == "cpu":
        set_cpu_threads(config.num_threads, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    seconds = _seconds_per_example(base, data, config.seed, device)
    logger.info(
        "timing estimate: %.4f s per training example forward, a training step counted as %.1f passes",
        seconds, TRAIN_PASSES_PER_FORWARD,
    )  # fmt: skip
    trainable, total = count_parameters(base)
    costs = {}
    for arm in arms:
        freezes = get_strategy(arm.strategy).freezes_body(config) and "unfreeze_layers" not in arm.options
        train = seconds if freezes else TRAIN_PASSES_PER_FORWARD * seconds
        costs[arm.name] = ArmCost(arm.name, trainable if not freezes else 0, total, train, seconds, freezes)
    return ComputeProfile(str(device), torch.get_num_threads(), costs)


def _seconds_per_example(base: TransferModel, data: LabelledData, seed: int, device: torch.device) -> float:
    """Inference seconds per training example: the median of ESTIMATE_TIMED timed batches (per token
    for variable-length inputs, at the sample's mean length)."""
    size = min(ESTIMATE_EXAMPLES, len(data.train))
    count = ESTIMATE_WARMUP + ESTIMATE_TIMED
    rows = np.random.default_rng(seed).permutation(len(data.train))
    rows = np.resize(rows, max(size * count, min(len(rows), ESTIMATE_LENGTH_SAMPLE))).tolist()
    encoded = encode_split(base, data.train.select(rows))
    lengths = [example_length(encoded[i]) for i in range(len(encoded))]
    collate = Collator(base.backbone)
    model = base.to(device).eval()
    timed = []
    with torch.inference_mode():
        for j in range(count):
            chunk = range(j * size, (j + 1) * size)
            batch = {k: v.to(device) for k, v in collate([encoded[i] for i in chunk]).items()}
            start = time.perf_counter()
            model(**_inputs(batch))
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            padded = size * max(lengths[i] for i in chunk) if base.backbone.variable_length else size
            timed.append(elapsed / padded)
    logger.debug("estimate batches, seconds per unit: %s", [f"{t:.3g}" for t in timed])
    per_unit = float(np.median(timed[ESTIMATE_WARMUP:]))
    distinct = lengths[: len(data.train)]  # np.resize repeats the rows of a small training split
    return per_unit * float(np.mean(distinct)) if base.backbone.variable_length else per_unit


def _probe_batches(
    base: TransferModel,
    data: LabelledData,
    config: FinetuneConfig,
    count: int,
    device: torch.device,
) -> tuple[list[dict[str, torch.Tensor]], int]:
    """``count`` batches of random training examples, grouped by length as training groups them."""
    encoded = encode_split(base, data.train)
    size = min(len(encoded), config.batch_size)
    rows = np.random.default_rng(config.seed).permutation(len(encoded))
    rows = np.resize(rows, size * count)  # repeats rows when the data is smaller than the probe
    if base.backbone.variable_length:
        rows = sorted(rows, key=lambda i: example_length(encoded[int(i)]))
    collate = Collator(base.backbone)
    chunks = [rows[i * size : (i + 1) * size] for i in range(count)]
    order = np.random.default_rng(config.seed).permutation(count)  # the warm-up batch: any length
    return [
        {k: v.to(device) for k, v in collate([encoded[int(i)] for i in chunks[j]]).items()} for j in order
    ], size


def _time_inference(model: TransferModel, batches: list[dict[str, torch.Tensor]], size: int) -> float:
    model.eval()
    with torch.inference_mode():
        model(**_inputs(batches[0]))
        start = time.perf_counter()
        for batch in batches[1:]:
            model(**_inputs(batch))
    return (time.perf_counter() - start) / (size * (len(batches) - 1))


def _probe_arm(
    base: TransferModel, config: FinetuneConfig, arm: Arm, batches: list[dict[str, torch.Tensor]], size: int,
    eval_seconds: float,
) -> ArmCost:  # fmt: skip
    options = {k: v for k, v in arm.options.items() if k not in ("layers", "layer_mix")}
    arm_config = dataclasses.replace(config, **options)
    model = copy.deepcopy(base)
    strategy = get_strategy(arm.strategy)
    phase = strategy.phases(model, arm_config)[-1]  # the costliest phase of multi-phase strategies
    groups = phase.configure(model)
    trainable, total = count_parameters(model)
    if phase.freezes_body:
        return ArmCost(arm.name, trainable, total, eval_seconds, eval_seconds, True)
    optimizer = adamw(groups)
    model.train()
    _step(model, optimizer, batches[0])
    start = time.perf_counter()
    for batch in batches[1:]:
        _step(model, optimizer, batch)
    seconds = (time.perf_counter() - start) / (size * (len(batches) - 1))
    del model, optimizer
    return ArmCost(arm.name, trainable, total, seconds, eval_seconds, False)


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k not in ("labels", "idx")}


def _step(model: TransferModel, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> None:
    loss = model.task.loss(model(**_inputs(batch)), batch["labels"])
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
