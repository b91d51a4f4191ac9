"""The ``learned-static`` baseline: a static path read off ``static`` routers trained on the KL objective.

A ``static`` router holds one logit vector per layer. Its path at level ``c`` executes the protected layers
(the first two and the last) and the ``c - 3`` others of largest execute-minus-skip margin: the ranking the
budget shift of routed inference would give, made exact at every level.
"""

from __future__ import annotations

import logging

from drllm.router import Routers

PROTECTED = (0, 1, -1)


log = logging.getLogger("drllm")


def learned_static_margins(folder: str, routed=None) -> list[float]:
    """Per layer, execute minus skip logit of the ``static`` routers saved in ``folder``.

    Raises:
        ValueError: when the routers there are not of the ``static`` kind, or were trained for another
            model than ``routed``.
    """
    routers = Routers.from_pretrained(folder)
    if routed is not None:
        routed.check_compatible(routers.config, source=str(folder))
    if routers.config.kind != "static":
        raise ValueError(
            f"{folder} holds {routers.config.kind} routers; learned_static needs static routers "
            "(drllm train --objective kl --router static)"
        )
    logits = routers.static.logits.detach().float()
    margins = (logits[:, 1] - logits[:, 0]).tolist()
    L = len(margins)
    skipped = [p % L for p in PROTECTED if margins[p % L] < 0]
    if skipped:  # the ranking still serves every level, but not the path this router would run itself
        log.warning(
            "%s: the static router skips protected layers %s; learned-static keeps them and ranks the "
            "others by its margins",
            folder,
            sorted(skipped),
        )
    if routers.config.stand_ins:
        log.warning("%s: learned-static runs the ranked paths without the stand-ins saved there", folder)
    return margins


def learned_path(margins: list[float], level: int) -> tuple[int, ...]:
    """The path executing ``level`` layers: the protected ones and the free ones of largest margin.

    Raises:
        ValueError: for a level below the protected count or above the layer count.
    """
    L = len(margins)
    protected = {p % L for p in PROTECTED}
    if not len(protected) <= level <= L:
        raise ValueError(f"learned-static needs a level in [{len(protected)}, {L}], got {level}")
    free = sorted((i for i in range(L) if i not in protected), key=lambda i: (-margins[i], i))
    keep = protected | set(free[: level - len(protected)])
    return tuple(1 if i in keep else 0 for i in range(L))
