"""Run write-ups: `from results import write_training_params` (run from the repo root)."""
