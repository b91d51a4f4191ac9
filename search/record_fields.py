"""The checks of a search record's values: a path of decisions, an id, a text, a count, a number.

Each error names where the value was read (``paths.jsonl line 3``) and what it should have been.
"""

from __future__ import annotations

DECISION_VALUES = (0, 1, 2, 3, 4)  # 3, 4: a layer's MLP alone, its attention alone (``--units sublayer``)


def validate_path(
    values, num_layers: int | None = None, where: str = "", name: str = "decisions"
) -> list[int]:
    """Check one path (0 skip / 1 execute / 2 repeat / 3 MLP alone / 4 attention alone per layer); a list.

    Args:
        values: the decoded JSON value.
        num_layers: when given, the path must have exactly this many values.
        where: prefix of the error message (``"paths.jsonl line 3"``).
        name: what the path is called in the message.

    Raises:
        ValueError: naming ``where``, for a value that is not a non-empty list of 0-4 (booleans are
            refused) or that has the wrong length.
    """
    at = f"{where}: " if where else ""
    if not isinstance(values, list) or not values:
        raise ValueError(f"{at}{name} must be a non-empty list of 0-4, got {values!r}")
    bad = [d for d in values if isinstance(d, bool) or not isinstance(d, int) or d not in DECISION_VALUES]
    if bad:
        raise ValueError(
            f"{at}{name} must hold only 0 (skip), 1 (execute), 2 (repeat), 3 (MLP alone), 4 (attention "
            f"alone); got {bad[:5]}"
        )
    if num_layers is not None and len(values) != num_layers:
        raise ValueError(f"{at}{name} has {len(values)} values, the model has {num_layers} layers")
    return list(values)


def _id(value, at: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ValueError(f"{at}id must be a non-empty string (or an integer), got {value!r}")
    return str(value)


def _text(value, key: str, at: str, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise ValueError(f"{at}{key} must be a {'' if empty else 'non-empty '}string, got {value!r}")
    return value


def _count(value, key: str, at: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{at}{key} must be a non-negative integer, got {value!r}")
    return value


def _layers(value, decisions: list[int], at: str) -> float | None:
    """A block path's layer count is a whole number; a sublayer path's cost in layers may be fractional."""
    if value is None or max(decisions) < 3:
        return _count(value, "layers", at)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"{at}layers must be a non-negative number, got {value!r}")
    return value


def _number(value, key: str, at: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{at}{key} must be a number, got {value!r}")
    return float(value)


def _paths(value, num_layers: int, where: str) -> list[list[int]]:
    if not isinstance(value, list):
        at = f"{where}: " if where else ""
        raise ValueError(f"{at}correct_paths must be a list of paths, got {value!r}")
    return [validate_path(p, num_layers, where, name=f"correct_paths[{i}]") for i, p in enumerate(value)]
