"""Weights & Biases, one switch for search and train: ``--wandb-project P`` (and a run name and tags).

A run goes online when W&B has credentials (``WANDB_API_KEY``, or ``wandb login``'s entry in ``~/.netrc``)
and ``WANDB_MODE`` is not ``offline``; otherwise it is written offline (``wandb sync`` uploads it later).
"""

from __future__ import annotations

import netrc
import os

WANDB_HOST = "api.wandb.ai"


def wandb_offline() -> bool:
    """Whether a W&B run should be written offline (no credentials, or ``WANDB_MODE=offline``)."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return True


def check_tags(tags) -> list[str]:
    """Tags as a list of non-empty strings (W&B allows at most 64 characters each)."""
    tags = list(tags or [])
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip() or len(tag) > 64:
            raise ValueError(f"a W&B tag must be 1 to 64 characters, got {tag!r}")
    return tags
