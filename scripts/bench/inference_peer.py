"""Runs inside .venv-setfit: the inference peer, sentence-transformers `encode` + a scikit-learn head.

    .venv-setfit/bin/python scripts/bench/inference_peer.py fit MODEL TRAIN_CSV HEAD_FILE THREADS
    .venv-setfit/bin/python scripts/bench/inference_peer.py predict MODEL TEST_CSV HEAD_FILE THREADS OUT_CSV
    .venv-setfit/bin/python scripts/bench/inference_peer.py throughput MODEL TEST_CSV HEAD THREADS REPEATS

`predict` is the whole process a user's serving script is (load both, encode, predict, write a CSV);
`throughput` prints the seconds of each repeat of encode + predict_proba on the loaded models.
The head is the benchmark's own file (joblib), written by `fit` in the benchmark's folder.
"""

import json
import sys
import time

import joblib
import pandas as pd
import torch
from sentence_transformers import SentenceTransformer
from sklearn.linear_model import LogisticRegression


def main() -> None:
    mode, model_folder, table, head_file, threads = sys.argv[1:6]
    torch.set_num_threads(int(threads))
    frame = pd.read_csv(table)
    texts = frame["text"].astype(str).tolist()
    model = SentenceTransformer(model_folder, device="cpu")
    if mode == "fit":
        head = LogisticRegression(max_iter=1000).fit(model.encode(texts), frame["label"])
        joblib.dump(head, head_file)
        return
    head = joblib.load(head_file)
    if mode == "predict":
        frame["prediction"] = head.predict(model.encode(texts, batch_size=32))
        frame.to_csv(sys.argv[6], index=False)
        return
    seconds = []
    for _ in range(int(sys.argv[6])):
        start = time.perf_counter()
        head.predict_proba(model.encode(texts, batch_size=32))
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
    main()
