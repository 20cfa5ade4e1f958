"""How int8 quantisation choices compare on a real test set: agreement with the float model,
accuracy change and speed, at batch sizes 1 and 32 (dynamic int8's answers depend on the batch).

    HF_HUB_OFFLINE=1 python scripts/quantization_variants.py RUN_DIR [--test_file test.csv]

RUN_DIR is a trained run; it is exported (fp32) into a temporary folder, and each variant is
onnxruntime's quantiser on that graph. Without --test_file, the built-in movie reviews' test split
(1,276 texts). The choice `nlptransfer export --quantize int8` makes is the first row; the others
are what docs/production.md compares it with.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def variants(graph: Any) -> dict[str, Any]:
    """Name -> a function writing that variant of the fp32 graph at ``source`` to ``target``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from nlptransfer.export.onnx import _activation_fed_matmuls, _quantize

    excluded = _activation_fed_matmuls(graph)

    def dynamic(**options: Any) -> Any:
        return lambda source, target: quantize_dynamic(source, target, weight_type=QuantType.QInt8, **options)

    def ours(precision: str) -> Any:
        def write(source: str, target: str) -> None:
            shutil.copy(source, target)
            _quantize(Path(target), precision)

        return write

    return {
        "int8 (default: per channel, activation-fed MatMuls float)": ours("int8"),
        "int8-weights (MatMulNBits, blocks of 32)": ours("int8-weights"),
        "dynamic, per tensor, every MatMul": dynamic(),
        "dynamic, per channel, every MatMul": dynamic(per_channel=True),
        "dynamic, per channel, 7-bit weights, activation-fed float": dynamic(
            per_channel=True, reduce_range=True, nodes_to_exclude=excluded
        ),
    }


def measure(runtime: Any, examples: list, reference: np.ndarray, gold: np.ndarray) -> list[str]:
    cells = []
    for batch in (1, 32):
        runtime.scores(examples[:32], batch)  # warm-up
        start = time.perf_counter()
        scores = runtime.scores(examples, batch)
        rate = len(examples) / (time.perf_counter() - start)
        agree = np.mean(scores.argmax(1) == reference.argmax(1))
        change = 100 * (np.mean(scores.argmax(1) == gold) - np.mean(reference.argmax(1) == gold))
        cells.append(f"{agree:.2%} / {change:+.2f} / {rate:.0f}")
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir")
    parser.add_argument("--test_file", default=None, help="CSV with text and label columns")
    args = parser.parse_args()
    import onnx

    from nlptransfer.export.onnx import export_onnx
    from nlptransfer.export.runtime import ONNX_NAME, OnnxModel

    if args.test_file:
        test = pd.read_csv(args.test_file)
    else:
        from nlptransfer.data.corpora import movie_reviews

        test = movie_reviews()["test"]
    with tempfile.TemporaryDirectory(prefix="quantization-") as tmp:
        fp32 = Path(tmp) / "fp32"
        export_onnx(args.run_dir, fp32)
        float_model = OnnxModel.from_pretrained(fp32)
        examples = float_model.tokenize(test["text"].astype(str).tolist())
        reference = float_model.scores(examples)
        gold = np.asarray([float_model.labels.index(str(v)) for v in test["label"]])
        print(f"{len(examples)} texts; float accuracy {np.mean(reference.argmax(1) == gold):.4f}")
        print("| variant | size | batch 1: agreement / accuracy change (points) / texts/s | batch 32: same |")
        print("|---|---|---|---|")
        graph = onnx.load(str(fp32 / ONNX_NAME), load_external_data=False)
        for name, write in variants(graph).items():
            folder = Path(tmp) / "variant"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(fp32, folder)
            (folder / ONNX_NAME).unlink()
            write(str(fp32 / ONNX_NAME), str(folder / ONNX_NAME))
            size = (folder / ONNX_NAME).stat().st_size / 2**20
            cells = measure(OnnxModel.from_pretrained(folder), examples, reference, gold)
            print(f"| {name} | {size:.0f} MB | {cells[0]} | {cells[1]} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
