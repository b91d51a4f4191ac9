"""Training and evaluation of routers, and the drllm command line.

``focal_loss`` is importable from here (pure torch); the trainer, evaluation and CLI modules import
Lightning and plotting libraries only when loaded.
"""

from .loss import class_weights, focal_loss

__all__ = ["class_weights", "focal_loss"]
