"""Times ``predict`` on loaded models, for the inference section: one process per model kind.

    python scripts/bench/inference_worker.py MODEL_DIR TEST_CSV REPEATS

MODEL_DIR is a training run (TransferModel, torch) or an ONNX export (OnnxModel, onnxruntime;
torch is never imported then). Prints one JSON line: the load seconds and each repeat's seconds.
"""

import json
import sys
import time


def main() -> None:
    folder, table, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
    import pandas as pd

    from nlptransfer.export.runtime import OnnxModel, is_export

    texts = pd.read_csv(table)["text"].astype(str).tolist()
    start = time.perf_counter()
    if is_export(folder):
        model = OnnxModel.from_pretrained(folder)
    else:
        from nlptransfer.model.transfer import TransferModel

        model = TransferModel.from_pretrained(folder)
    loaded = time.perf_counter() - start
    model.predict(texts[:32])  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(texts)
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"load_seconds": loaded, "seconds": seconds, "torch": "torch" in sys.modules}))


if __name__ == "__main__":
    main()
