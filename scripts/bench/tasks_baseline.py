"""Runs inside .venv-setfit: the hand-glued baseline of scripts/compare_tasks.py.

    .venv-setfit/bin/python scripts/bench/tasks_baseline.py '{"model": ..., "folder": ..., "kind": ...}'

What a user writes by hand: sentence-transformers embeddings of the same frozen MiniLM, then
scikit-learn with its defaults (one-vs-rest LogisticRegression, RidgeCV, LogisticRegression).
Prints one JSON line: the test predictions and the seconds it took.
"""

import json
import sys
import time

import numpy as np
import pandas as pd
import torch
from sentence_transformers import SentenceTransformer
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.multiclass import OneVsRestClassifier


def embed(model: SentenceTransformer, frame: pd.DataFrame, spec: dict) -> np.ndarray:
    u = model.encode(frame[spec["text"]].astype(str).tolist(), batch_size=64)
    if not spec.get("pair"):
        return u
    v = model.encode(frame[spec["pair"]].astype(str).tolist(), batch_size=64)
    return np.hstack([u, v, np.abs(u - v), u * v])  # the usual pair features


def main() -> None:
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(spec["threads"])
    start = time.perf_counter()
    model = SentenceTransformer(spec["model"], device="cpu")
    train = pd.read_parquet(f"{spec['folder']}/train.parquet")
    test = pd.read_parquet(f"{spec['folder']}/test.parquet")
    x_train, x_test = embed(model, train, spec), embed(model, test, spec)
    kind, labels = spec["kind"], spec["labels"]
    if kind == "multi_label_classification":
        estimator = OneVsRestClassifier(LogisticRegression(max_iter=1000)).fit(
            x_train, train[labels].to_numpy()
        )
        predictions = estimator.predict(x_test).tolist()
    elif kind == "regression":
        estimator = RidgeCV().fit(x_train, train[labels].to_numpy(dtype=float))
        predictions = estimator.predict(x_test).reshape(len(test), -1).tolist()
    else:
        estimator = LogisticRegression(max_iter=1000, class_weight=spec.get("class_weight"))
        predictions = estimator.fit(x_train, train["label"].astype(str)).predict(x_test).tolist()
    print(json.dumps({"predictions": predictions, "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
