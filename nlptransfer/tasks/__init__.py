"""What a model predicts and how it is scored: metrics, and the task contract."""
