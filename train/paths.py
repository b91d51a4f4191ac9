"""Reading the paths that the search wrote: one JSON object per line, checked line by line.

Each line holds ``id, task, model, prompt, target, decisions, layers, reward, base_reward, correct_paths,
simulations``; training needs ``id``, ``prompt`` (the text the search fed the model, already formatted)
and ``decisions`` (one value per decoder layer: 0 skip, 1 execute, 2 repeat). Every error names the file
and the 1-based line. A search that crashed mid-write may leave a torn last line (no trailing newline):
that line is dropped with a warning rather than refused.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

REQUIRED_KEYS = ("id", "prompt", "decisions")


def read_paths(path: str | os.PathLike, num_layers: int | None = None) -> list[dict]:
    """Read and check a search output file.

    Args:
        path: JSONL file written by the search.
        num_layers: When given, every ``decisions`` must have exactly this many values.

    Returns:
        The rows (dicts) in file order, ``id`` converted to ``str``.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: naming the file and line, for malformed JSON, a missing key, bad decisions, a wrong
            number of layers or a duplicate id; or when the file holds no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"paths file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    torn_candidate = len(lines) if not text.endswith("\n") else None
    rows, seen = [], {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = _parse_line(path, number, line, torn=number == torn_candidate)
        if row is None:
            continue
        _check_row(path, number, row, num_layers)
        if row["id"] in seen:
            raise ValueError(
                f"{path.name} line {number}: duplicate id {row['id']!r} (first on line {seen[row['id']]})"
            )
        seen[row["id"]] = number
        rows.append(row)
    if not rows:
        raise ValueError(f"paths file {path} holds no rows")
    return rows


def _parse_line(path: Path, number: int, line: str, torn: bool) -> dict | None:
    """One line's JSON object, or None for a torn last line (with a warning)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        if torn:
            warnings.warn(
                f"{path.name} line {number}: dropping a torn last line (no trailing newline, invalid JSON); "
                "the search was probably interrupted",
                stacklevel=3,
            )
            return None
        raise ValueError(
            f"{path.name} line {number}: malformed JSON ({err.msg} at column {err.colno})"
        ) from err
    if not isinstance(row, dict):
        raise ValueError(f"{path.name} line {number}: expected a JSON object, got {type(row).__name__}")
    return row


def _check_row(path: Path, number: int, row: dict, num_layers: int | None) -> None:
    """Refuse a row that lacks a key or whose decisions are not a valid path (in place: id -> str)."""
    where = f"{path.name} line {number}"
    missing = [key for key in REQUIRED_KEYS if key not in row]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; each row needs {list(REQUIRED_KEYS)}")
    if not isinstance(row["prompt"], str) or not row["prompt"]:
        raise ValueError(f"{where}: prompt must be a non-empty string")
    row["id"] = str(row["id"])
    decisions = row["decisions"]
    if not isinstance(decisions, list) or not decisions:
        raise ValueError(f"{where}: decisions must be a non-empty list of 0/1/2, got {decisions!r}")
    bad = [d for d in decisions if isinstance(d, bool) or not isinstance(d, int) or d not in (0, 1, 2)]
    if bad:
        raise ValueError(
            f"{where}: decisions must hold only 0 (skip), 1 (execute), 2 (repeat); got {bad[:5]}"
        )
    if num_layers is not None and len(decisions) != num_layers:
        raise ValueError(f"{where}: decisions has {len(decisions)} values, the model has {num_layers} layers")
