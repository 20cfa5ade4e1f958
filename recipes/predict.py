"""Predict labels with a saved model.

    python recipes/predict.py --model runs/movie-reviews-minilm-feature-extraction \
        --text "A triumph." --text "Dull and overlong."
    python recipes/predict.py --model runs/mine --input_file new.csv --text_column review \
        --output_file predictions.csv
"""

from __future__ import annotations

import sys

from nlptransfer.cli import run_recipe

if __name__ == "__main__":
    sys.exit(run_recipe("predict", sys.argv[1:]))
