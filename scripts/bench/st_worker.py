"""Runs inside .venv-setfit: time sentence-transformers' ``encode`` on the benchmark texts.

    .venv-setfit/bin/python scripts/bench/st_worker.py '{"model": ..., "texts": ..., ...}'

Prints one JSON line: the seconds of each timed repeat.
"""

import json
import sys
import time

import torch
from sentence_transformers import SentenceTransformer


def main() -> None:
    args = json.loads(sys.argv[1])
    torch.set_num_threads(args["threads"])
    with open(args["texts"], encoding="utf-8") as handle:
        texts = json.load(handle)
    model = SentenceTransformer(args["model"], device="cpu")
    model.max_seq_length = args["max_length"]
    model.encode(texts[: args["batch_size"]], batch_size=args["batch_size"])  # warm-up
    seconds = []
    for _ in range(args["repeats"]):
        start = time.perf_counter()
        model.encode(texts, batch_size=args["batch_size"], convert_to_numpy=True, show_progress_bar=False)
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"seconds": seconds, "modules": [type(m).__name__ for m in model]}))


if __name__ == "__main__":
    main()
