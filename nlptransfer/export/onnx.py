"""Export a trained run as one ONNX graph: backbone, pooling (long texts' windows included), head,
calibration and output activation, with dynamic batch and length, beside its tokenizer and a
small JSON config (labels, task state such as multi-label thresholds, max_length).

The graph comes from torch's exporter (``torch.onnx.export(..., dynamo=True)``); int8 is
onnxruntime's dynamic quantisation (int8 weights, activations quantised per batch), fp16 its
float16 converter. Every export is checked against the torch model on probe texts before it is
published: a graph that disagrees is never written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nlptransfer.backbones import peft_adapter
from nlptransfer.data.loaders import WINDOW_OWNER as LOADER_WINDOW_OWNER
from nlptransfer.data.loaders import collate_examples
from nlptransfer.errors import ConfigError, ModelLoadError
from nlptransfer.export.runtime import (
    EXPORT_CONFIG,
    ONNX_NAME,
    OUTPUT_NAME,
    TOKENIZER_NAME,
    WINDOW_OWNER,
    WINDOW_TEXTS,
    OnnxModel,
)
from nlptransfer.files import replace_files
from nlptransfer.model.transfer import TransferModel
from nlptransfer.version import __version__

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("int8", "int8-weights", "fp16")
# ONNX ops that end a feed-forward block's activation (GELU, ReLU, SiLU as Sigmoid and Mul, tanh).
ACTIVATION_OPS = {"Gelu", "FastGelu", "Relu", "Tanh", "Sigmoid", "Mul", "Erf"}
# The fp32 graph must give the torch model's scores within this (probabilities, or values in the
# targets' units scaled by their spread); reduced precisions are reported, not held to it.
FP32_TOLERANCE = 1e-4
# Texts of different lengths (one long enough to need several windows, one empty) that every
# export is checked on.
PROBE_TEXTS = (
    "A quiet, moving film about two brothers.",
    "Not good.",
    "",
    " ".join(["The plot wanders from one scene to the next while the actors do what they can."] * 40),
)


@dataclass
class ExportResult:
    """Where the export went, and how it compares with the torch model on the probe texts."""

    path: Path
    precision: str
    max_abs_diff: float
    agreement: float
    seconds: float
    # On the user's own texts (``check_texts``): how often the export answers as the torch model
    # does, and each one's accuracy when the true labels are given.
    check: dict[str, Any] | None = None


class _Graph(nn.Module):
    """The model as the graph computes it: token inputs (and windows) in, activated scores out."""

    def __init__(self, model: TransferModel) -> None:
        super().__init__()
        self.model = model

    # Named arguments, not **inputs: torch.export matches dynamic shapes to argument names.
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        window_owner: torch.Tensor | None = None,
        window_texts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        given = {
            "input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids,
            LOADER_WINDOW_OWNER: window_owner, WINDOW_TEXTS: window_texts,
        }  # fmt: skip
        inputs = {name: value for name, value in given.items() if value is not None}
        return self.model.task.activate(self.model(**inputs))


def export_onnx(
    run_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    quantize: str | None = None,
    trust_remote_code: bool = False,
    check_texts: list[str] | None = None,
    check_labels: list[Any] | None = None,
) -> ExportResult:
    """Export the model of ``run_dir`` (a training run or a saved model) to ``output_dir``.

    ``check_texts`` (and their ``check_labels``): texts of your own to compare the export with the
    torch model on before it is published; the figures are in the result and the export's config.

    ``quantize``: None (float32), ``"int8"`` (dynamic quantisation: the fastest on CPUs),
    ``"int8-weights"`` (int8 weight blocks: closest to float, answers independent of the batch) or
    ``"fp16"`` (half the size; for GPU runtimes).
    """
    if quantize not in (None, *QUANTIZATIONS):
        raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, got '{quantize}'.")
    _check_exporters()
    start = time.perf_counter()
    model = _exportable(TransferModel.from_pretrained(run_dir, trust_remote_code))
    probes = _probe_inputs(model)
    expected = _torch_scores(model, probes)
    kept = "an export saved there before is unchanged."
    with replace_files(Path(output_dir), "the ONNX export", kept, markers=(EXPORT_CONFIG,)) as staging:
        fp32 = staging / ONNX_NAME
        _export_graph(model, probes, fp32)
        if quantize is not None:
            _quantize(fp32, quantize)
        model.backbone.tokenizer.save_pretrained(staging)
        config = _config(model, run_dir, quantize, list(probes))
        (staging / EXPORT_CONFIG).write_text(json.dumps(config, indent=2))
        result = _check(staging, model, expected, quantize or "fp32")
        if check_texts:
            result.check = compare_on_texts(staging, model, check_texts, check_labels)
            (staging / EXPORT_CONFIG).write_text(json.dumps({**config, "check": result.check}, indent=2))
    result.path, result.seconds = Path(output_dir), time.perf_counter() - start
    return result


def _check_exporters() -> None:
    """torch's exporter needs onnx and onnxscript, the check and quantisers onnxruntime: none is a
    dependency of the default install."""
    import importlib.util

    missing = [
        name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise ConfigError(
            f"Exporting to ONNX needs {', '.join(missing)}, which are not installed: "
            "pip install 'nlptransfer[export]'."
        )


def _exportable(model: TransferModel) -> TransferModel:
    """The model ready to trace, or a clear stop for what the ONNX runtime cannot serve."""
    backbone = model.backbone
    if backbone.modality != "text" or not getattr(getattr(backbone, "tokenizer", None), "is_fast", False):
        raise ConfigError(
            f"ONNX export serves Hugging Face text models with a fast tokenizer (tokenizer.json), which "
            f"the runtime reads without transformers; this model's body is '{backbone.registry_name}'. "
            "Use TransferModel.from_pretrained(...).predict in Python for it."
        )
    config = peft_adapter.adapter_config(backbone)
    if config is not None and not config.is_prompt_learning:
        model.merge_adapter()  # a plain graph: the adapter's update folded into the weights
    return model.float().eval()


def _probe_inputs(model: TransferModel) -> dict[str, torch.Tensor]:
    texts = list(PROBE_TEXTS)
    pairs = list(reversed(texts)) if model.pair_encoding == "separate" else None
    batch = collate_examples(model.backbone, model.preprocess(texts, pairs))
    if LOADER_WINDOW_OWNER in batch:
        batch[WINDOW_OWNER] = batch.pop(LOADER_WINDOW_OWNER)
        batch[WINDOW_TEXTS] = torch.arange(len(texts))
    return batch


@torch.inference_mode()
def _torch_scores(model: TransferModel, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    return _Graph(model)(**dict(inputs)).float().numpy()


def _export_graph(model: TransferModel, probes: dict[str, torch.Tensor], path: Path) -> None:
    # Inputs are never longer than max_length (the runtime truncates there, as training did).
    rows, texts = torch.export.Dim("rows"), torch.export.Dim("texts")
    length = torch.export.Dim("length", max=model.max_length)
    shapes: dict[str, Any] = {}
    for name, _value in probes.items():
        if name == WINDOW_OWNER:
            shapes[name] = {0: rows}
        elif name == WINDOW_TEXTS:
            shapes[name] = {0: texts}
        else:
            shapes[name] = {0: rows, 1: length}
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.5 * 2**30
    try:
        program = torch.onnx.export(
            _Graph(model).eval(), (), kwargs=dict(probes), dynamo=True, dynamic_shapes=shapes,
            input_names=list(probes), output_names=[OUTPUT_NAME], verbose=False,
        )  # fmt: skip
        program.save(str(path), external_data=big)  # past 2 GB, protobuf needs the weights apart
    except Exception as err:  # the exporter raises many unrelated types
        raise ConfigError(
            f"torch could not export this model to ONNX ({type(err).__name__}: {str(err)[:300]}). Its "
            "saved folder still serves predictions through TransferModel.from_pretrained."
        ) from err


def _quantize(path: Path, precision: str) -> None:
    """Replace the float32 graph at ``path`` with its int8 or fp16 version.

    ``int8``: onnxruntime's dynamic quantisation, int8 weights (per channel) and activations (one
    scale per batch tensor, so a text's scores move slightly with the texts batched beside it).
    ``int8-weights``: int8 weights in blocks of 32 (MatMulNBits), activations quantised per row
    and block: answers independent of the batch and closer to float, at float32's speed on CPUs
    without a fast kernel for it."""
    import onnx

    source = path.with_name("fp32-" + path.name)
    path.rename(source)
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            str(source), str(path), weight_type=QuantType.QInt8, per_channel=True,
            nodes_to_exclude=_activation_fed_matmuls(onnx.load(str(source), load_external_data=False)),
        )  # fmt: skip
    elif precision == "int8-weights":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        blocks = MatMulNBitsQuantizer(
            onnx.load(str(source)), bits=8, block_size=32, is_symmetric=True, accuracy_level=4
        )
        blocks.process()
        blocks.model.save_model_to_file(str(path), use_external_data_format=False)
    else:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        half = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        onnx.save(half, str(path))
    for leftover in path.parent.glob("fp32-*"):
        leftover.unlink()


def _activation_fed_matmuls(graph: Any) -> list[str]:
    """The matrix products that read an activation function's output: a transformer's feed-forward
    down-projections (and any attention product after a scaling). Their inputs carry the outliers
    that 8-bit activations clip (Bondarenko et al., 2021), so they stay float32 (docs/production.md
    compares the choices: scripts/quantization_variants.py)."""
    producers = {output: node.op_type for node in graph.graph.node for output in node.output}
    return [
        node.name
        for node in graph.graph.node
        if node.op_type == "MatMul" and producers.get(node.input[0]) in ACTIVATION_OPS
    ]


def _config(model: TransferModel, run_dir: Any, quantize: str | None, inputs: list[str]) -> dict[str, Any]:
    tokenizer = model.backbone.tokenizer
    filler = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    return {
        "nlptransfer_version": __version__,
        "format": "onnx",
        "precision": quantize or "fp32",
        "onnx_file": ONNX_NAME,
        "tokenizer_file": TOKENIZER_NAME,
        "inputs": inputs,
        "output": OUTPUT_NAME,
        "labels": model.labels,
        "task": model.task.get_config(),
        "max_length": model.max_length,
        "long_text": model.get_config()["long_text"],
        "pair_encoding": model.pair_encoding,
        "pad_token_id": tokenizer.pad_token_id,
        "filler_token_id": filler,
        "truncation_side": getattr(tokenizer, "truncation_side", "right"),
        "source": str(run_dir),
    }


def _check(folder: Path, model: TransferModel, expected: np.ndarray, precision: str) -> ExportResult:
    """The staged export against the torch model on the probe texts: its tokeniser must give the
    same tokens, and an fp32 graph the same scores within :data:`FP32_TOLERANCE`."""
    runtime = OnnxModel.from_pretrained(folder)
    texts = list(PROBE_TEXTS)
    pairs = list(reversed(texts)) if model.pair_encoding == "separate" else None
    ours, theirs = runtime.tokenize(texts, pairs), model.preprocess(texts, pairs)
    keys = [name for name in runtime.input_names if name not in (WINDOW_OWNER, WINDOW_TEXTS)]
    same_tokens = _tokens(ours, keys) == _tokens(theirs, keys)
    if model.long_text is None and model.pair_encoding == "joint":  # pairs read as one sequence too
        swapped = list(reversed(texts))
        joint = runtime.tokenize(texts, swapped), model.preprocess(texts, swapped)
        same_tokens &= _tokens(joint[0], keys) == _tokens(joint[1], keys)
    if not same_tokens:
        raise ModelLoadError(
            "The exported tokenizer.json does not tokenise as the model's tokenizer does (a slow or "
            "customised tokenizer), so the ONNX runtime would read texts differently. Nothing was written."
        )
    scores = runtime.scores(ours, batch_size=len(texts))
    diff = float(np.abs(scores - expected).max())
    same = float(np.mean(scores.argmax(1) == expected.argmax(1)))
    if precision == "fp32" and diff > FP32_TOLERANCE:
        raise ModelLoadError(
            f"The ONNX graph's scores differ from the torch model's by {diff:.2e} (tolerance "
            f"{FP32_TOLERANCE:g}) on the probe texts; the export is wrong and was not written."
        )
    logger.info("%s export: largest score difference from torch %.2e on the probe texts", precision, diff)
    return ExportResult(folder, precision, diff, same, 0.0)


def compare_on_texts(
    folder: Path, model: TransferModel, texts: list[str], labels: list[Any] | None = None
) -> dict[str, Any]:
    """The export at ``folder`` against the torch model on ``texts``: the share of equal answers
    (classification) or the largest difference (regression), and both accuracies given ``labels``
    (single-label)."""
    expected = model.predict(texts)
    got = OnnxModel.from_pretrained(folder).predict(texts)
    report: dict[str, Any] = {"texts": len(texts)}
    if expected.problem_type == "regression":
        report["largest_difference"] = float(np.abs(got.probabilities - expected.probabilities).max())
        return report
    report["agreement"] = float(np.mean([a == b for a, b in zip(got.labels, expected.labels, strict=True)]))
    if labels is not None and expected.problem_type == "single_label_classification":
        truth = [str(label) for label in labels]
        for name, answers in (("torch", expected.labels), ("export", got.labels)):
            report[f"accuracy_{name}"] = float(
                np.mean([str(a) == t for a, t in zip(answers, truth, strict=True)])
            )
    return report


def _tokens(examples: list[Any], keys: list[str]) -> list[list[dict[str, list[int]]]]:
    """Each example's windows as plain lists of the graph's token inputs (the runtime's and the
    model's preprocessing compared like for like)."""
    plain = []
    for example in examples:
        windows = example if isinstance(example, list) else example.get("windows", [example])
        plain.append([{k: list(w[k]) for k in keys} for w in windows])
    return plain
