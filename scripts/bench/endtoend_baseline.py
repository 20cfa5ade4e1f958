"""Runs inside .venv-setfit: the hand-written baseline of the endtoend section, as a whole process.

    .venv-setfit/bin/python scripts/bench/endtoend_baseline.py MODEL_FOLDER DATA_FOLDER THREADS

The five lines users write (sentence-transformers `encode`, then scikit-learn's LogisticRegression
with its defaults). Prints one JSON line: the test predictions.
"""

import sys

import pandas as pd
import torch
from sentence_transformers import SentenceTransformer
from sklearn.linear_model import LogisticRegression

model_folder, folder, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
train, test = pd.read_csv(f"{folder}/train.csv"), pd.read_csv(f"{folder}/test.csv")
model = SentenceTransformer(model_folder, device="cpu")
classifier = LogisticRegression(max_iter=1000).fit(model.encode(train["text"].tolist()), train["label"])
print(pd.Series(classifier.predict(model.encode(test["text"].tolist()))).to_json(orient="values"))
