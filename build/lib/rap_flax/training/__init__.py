"""Training and evaluation: train_lib.train_and_evaluate and evaluate.evaluate_checkpoint."""
