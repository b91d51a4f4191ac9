"""Checks of a search record's ``supervision`` field as read from a paths file (see ``search.records``).

Training reads the path strings of ``evaluated`` (and of ``seeds.evaluated`` and ``fix``) digit by digit,
so a path that is not ``num_layers`` digits 0-4, or a reward or margin that is not a number, is refused
here naming the line, instead of failing later inside training.
"""

from __future__ import annotations


def check_supervision(value, num_layers: int, at: str) -> dict | None:
    """``value`` (a record's ``supervision``) when well formed; ValueError naming ``at`` and the key."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{at}supervision must be a JSON object, got {type(value).__name__}")
    _evaluated(value.get("evaluated"), num_layers, at, "supervision.evaluated")
    seeds = value.get("seeds")
    if isinstance(seeds, dict):
        _evaluated(seeds.get("evaluated"), num_layers, at, "supervision.seeds.evaluated")
    fix = value.get("fix")
    if fix is not None:
        if not isinstance(fix, dict):
            raise ValueError(f"{at}supervision.fix must be a JSON object, got {fix!r}")
        _path(fix.get("path"), num_layers, at, "supervision.fix.path")
    return value


def _evaluated(entries, num_layers: int, at: str, name: str) -> None:
    if entries is None:
        return
    if not isinstance(entries, list):
        raise ValueError(f"{at}{name} must be a list, got {type(entries).__name__}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{at}{name}[{i}] must be a JSON object, got {entry!r}")
        _path(entry.get("path"), num_layers, at, f"{name}[{i}].path")
        for key in ("reward", "margin"):
            v = entry.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ValueError(f"{at}{name}[{i}].{key} must be a number, got {v!r}")


def _path(path, num_layers: int, at: str, name: str) -> None:
    if not isinstance(path, str) or len(path) != num_layers or any(c not in "01234" for c in path):
        raise ValueError(
            f"{at}{name} must be a string of {num_layers} digits 0 (skip), 1 (execute), 2 (repeat), "
            f"3 (MLP alone) or 4 (attention alone), one per layer; got {path!r}"
        )
