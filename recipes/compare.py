"""Compare transfer strategies on your data: label budgets x seeds, with a Markdown + PNG report.

    accelerate launch recipes/compare.py                                   # movie reviews, MiniLM
    accelerate launch recipes/compare.py --train_file data.csv --budgets 8 64 all --seeds 0 1 2
    accelerate launch recipes/compare.py --arms feature-extraction finetune-top2 lora

Rerun the same command after an interruption: finished runs are reused.
"""

import sys

from nlptransfer.cli import run_recipe

if __name__ == "__main__":
    sys.exit(run_recipe("compare", sys.argv[1:]))
