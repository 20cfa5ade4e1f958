"""Section 1: feature-extraction throughput of the frozen MiniLM against sentence-transformers.

Both sides encode the same movie-review texts with the same weights, batch size and
max_length, mean-pooled, on the same threads; sentence-transformers runs in
``.venv-setfit`` (``bash scripts/setfit_env.sh``), never in nlptransfer's own venv.
nlptransfer's side is the code that feature extraction runs: tokenisation, length-sorted
batches, and the body under inference mode.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import PEER_PYTHON, REPO, Result, texts_of_corpus

TARGET = 1.2


def ours(texts: list[str], batch_size: int, max_length: int, repeats: int) -> list[float]:
    from nlptransfer.data import Split
    from nlptransfer.engine.inference import encode_split, inference_loader
    from nlptransfer.model.transfer import TransferModel

    model = TransferModel.from_backbone(
        "minilm", ["a", "b"], pooling="mean", layers=[-1], max_length=max_length
    )
    model.eval()
    split = Split(texts, [0] * len(texts))

    def encode(chosen: Split) -> None:
        loader = inference_loader(encode_split(model, chosen), model, batch_size)
        with torch.inference_mode():
            for batch in loader:
                model.layer_features(**{k: v for k, v in batch.items() if k not in ("labels", "idx")})

    encode(Split(texts[:batch_size], [0] * batch_size))  # warm-up, as the peer gets
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        encode(split)  # tokenisation included, as in encode()
        seconds.append(time.perf_counter() - start)
    return seconds


def peer(texts: list[str], batch_size: int, max_length: int, repeats: int, threads: int) -> dict[str, Any]:
    from nlptransfer.backbones.sources import resolve_model

    if not PEER_PYTHON.is_file():
        venv = PEER_PYTHON.parent.parent
        raise SystemExit(f"The extraction section runs sentence-transformers in {venv}, which does not "
                         "exist yet. Create it with: bash scripts/setfit_env.sh")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "texts.json"
        file.write_text(json.dumps(texts))
        args = {"model": resolve_model("minilm").path, "texts": str(file), "batch_size": batch_size,
                "max_length": max_length, "repeats": repeats, "threads": threads}  # fmt: skip
        done = subprocess.run([str(PEER_PYTHON), str(REPO / "scripts/bench/st_worker.py"), json.dumps(args)],
                              check=True, capture_output=True, text=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(options: Any) -> Result:
    texts = texts_of_corpus(options.num_texts)
    threads = torch.get_num_threads()
    mine = ours(texts, options.batch_size, options.max_length, options.repeats)
    theirs = peer(texts, options.batch_size, options.max_length, options.repeats, threads)
    ours_rate = len(texts) / statistics.median(mine)
    peer_rate = len(texts) / statistics.median(theirs["seconds"])
    return Result(
        section="extraction",
        what=f"frozen MiniLM features, {len(texts)} movie-review texts, batch {options.batch_size}, "
        f"max_length {options.max_length}, {threads} threads",
        ours=f"{ours_rate:.1f} texts/s",
        peer=f"{peer_rate:.1f} texts/s (sentence-transformers encode)",
        ratio=ours_rate / peer_rate,
        target=TARGET,
        details={"ours_seconds": mine, "peer_seconds": theirs["seconds"], "peer_modules": theirs["modules"]},
    )
