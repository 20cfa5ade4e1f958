#!/usr/bin/env bash
# Installs the CPU build of torch into the active Python environment, unless a torch is already there.
#   bash scripts/install_torch.sh
# A plain `pip install torch` from PyPI takes a CUDA build of several GB on Linux, so this never
# falls back to it. For a GPU, install the torch build for your CUDA first (see README.md,
# "GPU machines"); this script then keeps it.
set -euo pipefail
TORCH_VERSION="2.13.0"
CPU_INDEX="https://download.pytorch.org/whl/cpu"

if python -c "import torch" >/dev/null 2>&1; then
    echo "Keeping the installed torch $(python -c 'import torch; print(torch.__version__)')."
    exit 0
fi
# 1. The CPU wheel by its local version label: a wheel on disk or a configured index that has it.
if python -m pip install --quiet "torch==${TORCH_VERSION}+cpu" 2>/dev/null; then
    exit 0
fi
echo "torch==${TORCH_VERSION}+cpu is not in your package indexes; trying ${CPU_INDEX}."
# 2. PyTorch's own CPU index (the label is Linux/Windows only; this also finds macOS builds).
if python -m pip install --quiet "torch==${TORCH_VERSION}" --index-url "${CPU_INDEX}"; then
    exit 0
fi
cat >&2 <<MESSAGE
error: could not install the CPU build of torch ${TORCH_VERSION} (neither torch==${TORCH_VERSION}+cpu
from your package indexes nor torch==${TORCH_VERSION} from ${CPU_INDEX} could be installed).
Nothing else was installed: a plain 'pip install torch' would take a CUDA build of several GB.
Fix: install a torch build yourself, then run this script again (it keeps an installed torch):
  CPU: pip install torch --index-url ${CPU_INDEX}
  GPU: pip install torch --index-url https://download.pytorch.org/whl/cu128   (your CUDA version;
       the selector on https://pytorch.org/get-started/locally/ gives the exact command)
MESSAGE
exit 1
