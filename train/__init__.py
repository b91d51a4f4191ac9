"""Router training: from search labels (focal loss, Lightning) or from the base model itself (KL at a budget).

``trainer.train_routers`` is ``drllm train``: ``--objective labels`` fits a search's paths (features cached
by ``features``, ``module``/``data`` for Lightning, ``loss`` the class-balanced focal loss, ``targets`` soft
targets, ``regret`` the validation verdict); ``--objective kl`` runs ``kl_run.train_kl`` (``kl``: relaxed
routing with a Lagrange-held layer budget). ``focal_loss`` is importable from here (pure torch); Lightning
loads only with the trainer.
"""

from .loss import class_weights, focal_loss

__all__ = ["class_weights", "focal_loss"]
