"""Training targets for the routers: one searched path per example (hard), or every safe path (soft).

A hard target is the one-hot decision of the path the search chose. That path is one of several that keep
the answer, picked by the order the tree tried them, so its label is partly chance. A soft target is, per
layer, the distribution of skip / execute / repeat over every path the search evaluated that is *safe*:

- for an example the base model gets right, a path that keeps the right answer with a gold margin of at
  least ``safe_margin``; the all-execute path counts too, down-weighted (``full_weight``), and every other
  path weighs ``2 ** (L - layers)``, so shorter paths count more and a repeat less;
- for an example it gets wrong, only a fix that passed the wrong-gold control (``trusted_fix`` in the
  record; see ``drllm search --control wrong-gold --fix-margin``) counts, beside the all-execute path: the
  correct path with the largest gold margin (``fix`` in the record); without the control no fix is
  trusted and the target is to execute every layer.

Records without the evaluated paths (written before the search kept them) keep their hard target.
"""

from __future__ import annotations

from typing import Literal

import torch

from drllm.search.records import SearchRecord
from drllm.search.supervision import path_layers, path_table, safe_paths

Targets = Literal["hard", "soft"]
TARGETS = ("hard", "soft")


def hard_targets(record: SearchRecord, num_layers: int, actions: int = 3) -> torch.Tensor:
    """``[L, A]`` one-hot of the record's chosen path (``A`` actions: 3, or 5 with sublayer units)."""
    decisions = torch.tensor(record.decisions)
    return torch.nn.functional.one_hot(decisions, actions).float().reshape(num_layers, actions)


def soft_targets(
    record: SearchRecord,
    num_layers: int,
    safe_margin: float = 0.0,
    full_weight: float = 0.5,
    actions: int = 3,
) -> torch.Tensor:
    """``[L, A]``: per layer, the weighted shares of every action over the record's safe paths."""
    info = record.supervision or {}
    evaluated = info.get("evaluated")
    if not evaluated:
        return hard_targets(record, num_layers, actions)
    if (record.base_reward or 0.0) >= 1.0:
        return path_table(safe_paths(evaluated, num_layers, safe_margin, full_weight), num_layers, actions)
    paths = [([1] * num_layers, full_weight)]
    if info.get("fix"):  # the correct path with the largest gold margin
        fix = info["fix"]["path"]
    else:  # records searched before the search kept it: the chosen path
        fix = "".join(map(str, record.decisions))
    scored = any(e["path"] == fix and e.get("reward", 0.0) >= 1.0 for e in evaluated)
    if info.get("trusted_fix") and scored and fix != "1" * num_layers:  # only a trusted fix counts
        decisions = [int(c) for c in fix]
        paths.append((decisions, 2.0 ** (num_layers - path_layers(decisions))))
    return path_table(paths, num_layers, actions)


def target_table(
    rows: list[SearchRecord],
    num_layers: int,
    mode: Targets = "hard",
    safe_margin: float = 0.0,
    actions: int = 3,
) -> torch.Tensor:
    """``[N, L, A]`` targets of every row (see the module docstring).

    Raises:
        ValueError: for an unknown mode.
    """
    if mode not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {mode!r}")
    if mode == "hard":
        return torch.stack([hard_targets(r, num_layers, actions) for r in rows])
    return torch.stack([soft_targets(r, num_layers, safe_margin, actions=actions) for r in rows])


def path_actions(rows) -> int:
    """The routers' actions for these paths: 5 when any holds a sublayer unit, else 3."""
    for row in rows:
        evaluated = (row.supervision or {}).get("evaluated") or []
        if (
            (row.settings or {}).get("units") == "sublayer"
            or any(d >= 3 for path in (row.decisions, *row.correct_paths) for d in path)
            or any(c in "34" for e in evaluated for c in e["path"])
        ):
            return 5
    return 3
