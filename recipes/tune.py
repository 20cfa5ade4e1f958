"""Search a strategy's hyperparameters on your data with Optuna: trials, pruning, a budget.

    accelerate launch recipes/tune.py --n_trials 20                         # movie reviews, MiniLM
    accelerate launch recipes/tune.py --train_file data.csv --strategy finetune --tune_timeout_minutes 60

Rerun the same command to continue the study (it lives in OUTPUT_DIR/study.db).
"""

import sys

from nlptransfer.cli import run_recipe

if __name__ == "__main__":
    sys.exit(run_recipe("tune", sys.argv[1:]))
