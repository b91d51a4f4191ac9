"""Task rows: ``Example``, reading JSON lines, ids, and the checks that keep an example fair to score.

Every key of a JSON line appears once and no line is over the limit; ``BadRows`` skips a bad row with a
warning naming it, or refuses it (``strict``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_ROW_BYTES = 1 << 20
"""A task file line longer than this (1 MiB) is refused by its length, before it is decoded."""
MAX_PROMPT_CHARS = 1_000_000
"""A question, prompt or searched prompt longer than this is refused before it is tokenized."""

log = logging.getLogger("drllm.search.tasks.base")
_WARNED: set[str] = set()


class BadRows:
    """What a loader does with a row it refuses: raise at once (``strict``), or skip it with a warning.

    Skipped rows are logged once per process each (a file loaded twice does not repeat its warnings).
    ``done`` raises when every row was bad, and logs how many were skipped otherwise.
    """

    def __init__(self, source: str, strict: bool = True, warn: bool = True) -> None:
        self.source, self.strict, self.warn, self.skipped = source, strict, warn, []

    def refuse(self, err: ValueError) -> None:
        """Raise ``err`` when strict; else record it and warn once."""
        if self.strict:
            raise err
        self.skipped.append(str(err))
        if self.warn and str(err) not in _WARNED:
            _WARNED.add(str(err))
            log.warning("skipping a bad row: %s", err)

    def check(self, make, where: str) -> Example | None:
        """``check_example(make(), where)``, or None when the row is refused and skipped."""
        try:
            return check_example(make(), where)
        except ValueError as err:
            self.refuse(err if str(err).startswith(where) else ValueError(f"{where}: {err}"))
            return None

    def done(self, kept: int) -> None:
        """Refuse a source with no good row; sum up the skipped ones."""
        if not self.skipped:
            return
        if kept == 0:
            raise ValueError(f"{self.source}: no usable row; the first problem: {self.skipped[0]}")
        summary = (
            f"{self.source}: skipped {len(self.skipped)} bad row(s), kept {kept} "
            "(strict=True, or --strict, stops at the first)"
        )
        if summary not in _WARNED:
            _WARNED.add(summary)
            log.warning(summary)


@dataclass(frozen=True)
class Example:
    """One benchmark item.

    Attributes:
        id: Stable identifier.
        question: The question text.
        choices: Option texts for multiple choice; empty for exact-answer tasks.
        answer: Gold option index (multiple choice) or gold final answer string (exact).
        labels: Option labels as released (A-E or 1-4) for multiple choice.
        meta: Extra fields (level, subject, ...); not compared.
    """

    id: str
    question: str
    choices: tuple[str, ...] = ()
    answer: int | str = 0
    labels: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict, compare=False)


class _DuplicateKey(Exception):
    """A JSON object names one key twice (``json`` would keep the last value silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def read_jsonl_rows(path: Path, bad: BadRows | None = None) -> Iterator[tuple[int, Any]]:
    """``(1-based line number, decoded value)`` for each non-blank line of a JSONL file.

    Lazily, so the problems of a file are met in line order.

    Raises:
        ValueError: naming the file and line, for a line longer than ``MAX_ROW_BYTES`` (refused by its
            length, before it is decoded or tokenized), a line that is not UTF-8 or not JSON; with a
            non-strict ``bad``, such a line is skipped with a warning instead.
    """
    bad = bad or BadRows(str(path))
    with path.open("rb") as handle:
        for number, raw in enumerate(iter(lambda: handle.readline(MAX_ROW_BYTES + 1), b""), start=1):
            where = f"{path} line {number}"
            if len(raw) > MAX_ROW_BYTES:
                bad.refuse(
                    ValueError(f"{where}: longer than {MAX_ROW_BYTES} bytes, the most a task row may hold")
                )
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line unread
                    raw = handle.readline(MAX_ROW_BYTES + 1)
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad.refuse(ValueError(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})"))
                continue
            if not text.strip():
                continue
            try:
                value = json.loads(text, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as err:
                bad.refuse(ValueError(f"{where}: invalid JSON ({err.msg})"))
                continue
            except _DuplicateKey as err:
                bad.refuse(ValueError(f"{where}: the key {err.args[0]!r} appears twice in the row"))
                continue
            yield number, value


def _read_jsonl(path: Path) -> list[dict]:
    """Read one JSON object per non-blank line (see :func:`read_jsonl_rows`)."""
    return [row for _, row in read_jsonl_rows(path)]


def example_id(value: Any, where: str) -> str:
    """A row's id as a string; ``null``, ``""``, booleans, floats and containers are refused."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise ValueError(f"{where}: id must be a non-empty string or an integer, got {value!r}")
    return str(value)


def check_example(ex: Example, where: str) -> Example:
    """Refuse an example that cannot be searched or scored fairly, naming ``where``, its id and the value.

    Its question (or prompt) must be non-empty and at most ``MAX_PROMPT_CHARS`` long; a multiple-choice
    example must not repeat an option (the gold one could never win) or a label.
    """
    if not ex.question.strip():
        raise ValueError(f"{where}: example {ex.id!r} has an empty question (or prompt)")
    if len(ex.question) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"{where}: example {ex.id!r} has a question of {len(ex.question)} characters, "
            f"more than {MAX_PROMPT_CHARS}"
        )
    for j, choice in enumerate(ex.choices):
        if not str(choice).strip():
            raise ValueError(f"{where}: example {ex.id!r} has an empty option (option {j})")
    for what, values in (("choice", ex.choices), ("label", ex.labels)):
        for j, value in enumerate(values):
            if value in values[:j]:
                i = values.index(value)
                raise ValueError(
                    f"{where}: example {ex.id!r} repeats the {what} {value!r} (options {i} and {j}); "
                    "every option must differ"
                )
    return ex


def check_limit(limit: int | None) -> None:
    """Refuse a limit that is not None or a whole number >= 0 (``-1`` would drop the last example)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a whole number >= 0 (or None for every example), got {limit!r}")


def _hub_rows(hub: tuple[str, str], split: str) -> list[dict]:
    """Load rows from the Hugging Face hub with ``datasets.load_dataset`` (raises when offline)."""
    if os.environ.get("DRLLM_NO_HUB") == "1":
        raise RuntimeError("hub disabled by DRLLM_NO_HUB=1")
    import datasets

    return [dict(row) for row in datasets.load_dataset(hub[0], hub[1], split=split)]
