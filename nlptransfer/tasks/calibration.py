"""Calibrated probabilities: temperature scaling, fitted on held-out outputs, and how far
probabilities are from the frequencies they claim (expected calibration error, reliability diagram).

Temperature scaling (Guo et al., 2017) divides the logits by one number T fitted to minimise the
negative log-likelihood of held-out examples (one T per label for multi-label). It never changes
which class is the most probable, so accuracy is unchanged; only the confidence moves. Numpy and
scipy only: the ONNX runtime reads the same numbers without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Equal-width confidence bins for the ECE and the diagram (Guo et al. use 15).
ECE_BINS = 15
# Fewer held-out examples than this (per label for multi-label) would fit noise: T stays 1.
MIN_EXAMPLES = 10
# log T is searched within these bounds: a T of 0.05 or 20 already means a broken model.
LOG_T_BOUNDS = (float(np.log(0.05)), float(np.log(20.0)))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * logits))  # stable for large |logits|


def scale(logits: np.ndarray, temperature: float | list[float] | None) -> np.ndarray:
    """Logits divided by the temperature (one per column when a list); unchanged for None."""
    if temperature is None:
        return logits
    return logits / np.asarray(temperature, dtype=logits.dtype)


def _softmax_nll(log_t: float, logits: np.ndarray, targets: np.ndarray) -> float:
    z = logits / np.exp(log_t)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(z)), targets]))


def _binary_nll(log_t: float, logits: np.ndarray, targets: np.ndarray) -> float:
    z = logits / np.exp(log_t)
    # log(1 + e^-z) for positives, log(1 + e^z) for negatives, computed stably.
    return float(np.mean(np.logaddexp(0.0, np.where(targets, -z, z))))


def _minimise(nll: Any, *args: np.ndarray) -> float | None:
    """The temperature of least NLL, or None when the least is at a bound: held-out outputs that
    are separable (every answer right with a margin) pull T towards 0 without end, and sharpening
    them would claim a certainty that 10 or 20 examples cannot show."""
    from scipy.optimize import minimize_scalar

    found = minimize_scalar(nll, bounds=LOG_T_BOUNDS, args=args, method="bounded")
    if min(abs(found.x - bound) for bound in LOG_T_BOUNDS) < 1e-2:
        return None
    return float(np.exp(found.x))


def fit_temperature(
    logits: np.ndarray, targets: np.ndarray, multi_label: bool = False
) -> float | list[float] | None:
    """The temperature of least held-out NLL: one number (softmax over classes), or one per label
    (each label's sigmoid; 1.0 for a label with too few positives or negatives, or separable). None:
    too few examples to fit, or separable outputs."""
    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) < MIN_EXAMPLES:
        return None
    if not multi_label:
        return _minimise(_softmax_nll, logits, np.asarray(targets, dtype=np.int64))
    truth = np.asarray(targets).astype(bool)
    temperatures = []
    for j in range(logits.shape[1]):
        positives = int(truth[:, j].sum())
        if min(positives, len(truth) - positives) < MIN_EXAMPLES // 2:
            temperatures.append(1.0)
        else:
            temperatures.append(_minimise(_binary_nll, logits[:, j], truth[:, j]) or 1.0)
    return temperatures


def probabilities(logits: np.ndarray, temperature: Any, multi_label: bool) -> np.ndarray:
    scaled = scale(np.asarray(logits, dtype=np.float64), temperature)
    return sigmoid(scaled) if multi_label else softmax(scaled)


def reliability(probs: np.ndarray, targets: np.ndarray, multi_label: bool = False) -> dict[str, Any]:
    """Expected calibration error and its bins: for single-label, the predicted class's probability
    against how often it is right; for multi-label, every label's probability against how often the
    label applies. ``bins``: per bin, its mean confidence, its frequency and its count."""
    if multi_label:
        confidence = probs.ravel()
        hits = np.asarray(targets).astype(bool).ravel().astype(np.float64)
    else:
        confidence = probs.max(axis=1)
        hits = (probs.argmax(axis=1) == np.asarray(targets)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, ECE_BINS - 1)
    counts = np.bincount(which, minlength=ECE_BINS)
    safe = np.maximum(counts, 1)
    mean_conf = np.bincount(which, weights=confidence, minlength=ECE_BINS) / safe
    frequency = np.bincount(which, weights=hits, minlength=ECE_BINS) / safe
    ece = float(np.sum(counts * np.abs(frequency - mean_conf)) / max(len(confidence), 1))
    bins = {"confidence": mean_conf.tolist(), "frequency": frequency.tolist(), "count": counts.tolist()}
    return {"ece": ece, "bins": bins}


def nll(probs: np.ndarray, targets: np.ndarray, multi_label: bool = False) -> float:
    """Mean negative log-likelihood of the targets (a certain, wrong answer counts as log 1e-12)."""
    if multi_label:
        truth = np.asarray(targets).astype(bool)
        chosen = np.where(truth, probs, 1.0 - probs)
    else:
        chosen = probs[np.arange(len(probs)), np.asarray(targets)]
    return float(-np.mean(np.log(np.clip(chosen, 1e-12, 1.0))))


def calibration_report(
    logits: np.ndarray, targets: np.ndarray, temperature: Any, multi_label: bool, split: str
) -> dict[str, Any]:
    """ECE and NLL of ``split`` before (T = 1) and after temperature scaling, with both bin sets."""
    before = probabilities(logits, None, multi_label)
    after = probabilities(logits, temperature, multi_label)
    rel_before = reliability(before, targets, multi_label)
    rel_after = reliability(after, targets, multi_label)
    return {
        "evaluated_on": split,
        "ece_before": rel_before["ece"],
        "ece_after": rel_after["ece"],
        "nll_before": nll(before, targets, multi_label),
        "nll_after": nll(after, targets, multi_label),
        "bins_before": rel_before["bins"],
        "bins_after": rel_after["bins"],
    }


def plot_reliability(report: dict[str, Any], path: Path) -> Path:
    """The reliability diagram (frequency against confidence per bin, before and after) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for key, name in (("before", "before"), ("after", "after temperature scaling")):
        bins = report[f"bins_{key}"]
        used = [i for i, n in enumerate(bins["count"]) if n > 0]
        ece = report[f"ece_{key}"]
        ax.plot(
            [bins["confidence"][i] for i in used], [bins["frequency"][i] for i in used],
            marker="o", label=f"{name} (ECE {ece:.3f})",
        )  # fmt: skip
    ax.set_xlabel("confidence")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"Reliability on the {report['evaluated_on']} split")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
