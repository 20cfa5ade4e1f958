"""Train a text classifier by transfer learning.

    accelerate launch recipes/finetune.py                       # MiniLM on movie reviews, offline
    accelerate launch recipes/finetune.py --strategy finetune --unfreeze_layers 2
    accelerate launch recipes/finetune.py --model bert-base-uncased --train_file my.csv \
        --text_column review --label_column sentiment --output_dir runs/mine
    accelerate launch recipes/finetune.py --config recipes/configs/finetune.yaml --epochs 3

Every option: `python recipes/finetune.py --help`.
"""

from __future__ import annotations

import sys

from nlptransfer.cli import run_recipe

if __name__ == "__main__":
    sys.exit(run_recipe("train", sys.argv[1:]))
