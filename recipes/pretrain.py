"""Domain-adaptive pretraining: continue a model's own objective on unlabelled in-domain text.

    accelerate launch recipes/pretrain.py                       # MiniLM, masked-LM, movie-review texts
    accelerate launch recipes/pretrain.py --model smollm2       # a decoder: causal-LM
    accelerate launch recipes/pretrain.py --model bert-base-uncased --train_file notes.txt \
        --epochs 3 --output_dir runs/bert-notes
    accelerate launch recipes/finetune.py --model runs/bert-notes --strategy finetune ...   # then transfer

Every option: `python recipes/pretrain.py --help`.
"""

from __future__ import annotations

import sys

from nlptransfer.cli import run_recipe

if __name__ == "__main__":
    sys.exit(run_recipe("pretrain", sys.argv[1:]))
