"""Training: ``train(config) -> run_dir``, callbacks, optimiser, run directory."""

from kerasmlic.training.run import train

__all__ = ["train"]
