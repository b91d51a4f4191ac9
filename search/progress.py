"""Progress for long work: log lines and tqdm bars, both on when the ``drllm`` logger shows INFO.

The ``drllm`` command turns INFO on (``configure_logging``); from Python nothing is shown unless you ask:
``logging.getLogger("drllm").setLevel(logging.INFO)`` (or ``configure_logging()``). No function takes a
``progress`` flag.
"""

from __future__ import annotations

import logging
import sys

LOGGER = "drllm"


def showing() -> bool:
    """Whether progress is shown: the ``drllm`` logger is enabled for INFO."""
    return logging.getLogger(LOGGER).isEnabledFor(logging.INFO)


def bar(total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0):
    """A tqdm progress bar, shown only when progress is (see ``showing``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not showing(), dynamic_ncols=True)


def configure_logging(level: int = logging.INFO) -> None:
    """Send the ``drllm`` logger's messages to stderr, one plain line each (what the command does)."""
    logger = logging.getLogger(LOGGER)
    logger.setLevel(level)
    if not any(getattr(h, "_drllm", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._drllm = True
        logger.addHandler(handler)
