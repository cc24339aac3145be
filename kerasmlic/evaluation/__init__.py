"""Evaluation of trained runs: ``evaluate_run(run_dir, ...) -> dict``."""

from kerasmlic.evaluation.evaluate import evaluate_model, evaluate_run

__all__ = ["evaluate_model", "evaluate_run"]
