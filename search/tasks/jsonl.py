"""User tasks from a JSONL file (``jsonl:PATH``): exact-answer, multiple-choice or prompts-only rows.

Rows are ``{"id", "prompt", "target"}`` (exact answer, prompt used as written),
``{"id", "question", "choices", "answer"}`` (multiple choice; ``answer`` an index or a label) or
``{"id", "prompt"}`` (prompts only, no gold: ``drllm eval`` judges paths by closeness to the base model,
``drllm train --objective kl`` and ``drllm signal --target kl`` need no gold either). The kind is
decided by the first row. Malformed rows are refused with the file name and line number, as are ids that
are ``null`` or empty, empty questions or prompts, repeated options or labels, lines that are not UTF-8
and lines over 1 MiB (see ``base.check_example`` and ``base.read_jsonl_rows``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .base import (
    BadRows,
    ChoiceTask,
    ExactTask,
    Example,
    Task,
    _chat,
    check_limit,
    effective_style,
    example_id,
    read_jsonl_rows,
)


def _parse_jsonl(path: Path, bad: BadRows | None = None) -> Iterator[tuple[int, dict]]:
    """(1-based line number, object) for each non-blank line, lazily.

    Bad lines raise ValueError naming them (or are skipped, with a non-strict ``bad``). A file with no line
    at all raises too.
    """
    bad = bad or BadRows(str(path))
    empty = True
    for number, row in read_jsonl_rows(path, bad):
        empty = False
        if isinstance(row, dict):
            yield number, row
        else:
            bad.refuse(ValueError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}"))
    if empty and not bad.skipped:
        raise ValueError(f"{path} is empty: expected one JSON object per line")


def _require(row: dict, keys: tuple[str, ...], where: str) -> None:
    """Raise ValueError naming the first missing key."""
    missing = [key for key in keys if key not in row]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; row has {sorted(row)}")


EXACT_ONLY, CHOICE_ONLY = {"prompt", "target"}, {"question", "choices"}


def _one_kind(row: dict, where: str) -> None:
    """Refuse a row holding keys of both the exact and the multiple-choice kinds (one would be ignored)."""
    exact, choice = sorted(EXACT_ONLY & set(row)), sorted(CHOICE_ONLY & set(row))
    if exact and choice:
        raise ValueError(
            f"{where}: the row mixes exact-answer keys {exact} with multiple-choice keys {choice}; "
            "keep the keys of one kind"
        )


def _choice_answer(row: dict, labels: tuple[str, ...], where: str) -> int:
    """Gold index of a multiple-choice jsonl row (answer is an index or a label)."""
    answer = row["answer"]
    if isinstance(answer, int) and not isinstance(answer, bool):
        if 0 <= answer < len(labels):
            return answer
        raise ValueError(f"{where}: answer index {answer} out of range for {len(labels)} choices")
    if isinstance(answer, str) and answer in labels:
        return labels.index(answer)
    raise ValueError(f"{where}: answer {answer!r} is neither an index nor one of the labels {list(labels)}")


class _JsonlSource:
    """Loading shared by the jsonl tasks: the file is the only split, so any split name loads it."""

    splits: tuple[str, ...] = ("all",)
    default_split_eval = "all"

    def __init__(self, name: str, path: Path) -> None:
        self.name, self.path = name, path

    def load(
        self,
        split: str = "all",
        data_dir: str | Path | None = None,
        limit: int | None = None,
        strict: bool = False,
    ) -> list[Example]:
        """Load and check every row of the file (``data_dir`` is ignored; ``split`` must be ``"all"``).

        A split name such as ``validation`` is refused: the file is one split, so evaluating "its validation
        split" would evaluate (and calibrate on) the same rows. With ``strict`` the first bad row raises
        ValueError naming file and line; without it, each bad row is skipped with a warning naming it (a file
        with no good row still raises).
        """
        check_limit(limit)
        if split not in self.splits:
            raise ValueError(
                f"task {self.name!r} is one jsonl file ({self.path}) with no split {split!r}: leave out "
                "--split (or pass 'all'), and keep held-out rows in a file of their own"
            )
        bad = BadRows(str(self.path), strict)
        examples, seen = [], {}
        for number, row in _parse_jsonl(self.path, bad):
            where = f"{self.path} line {number}"
            ex = bad.check(lambda row=row, where=where: self._row_example(row, where), where)
            if ex is None:
                continue
            if ex.id in seen:
                bad.refuse(ValueError(f"{where}: duplicate id {ex.id!r} (first on line {seen[ex.id]})"))
                continue
            seen[ex.id] = number
            examples.append(ex)
        bad.done(len(examples))
        return examples[:limit] if limit is not None else examples


def option_labels(n: int) -> list[str]:
    """``A`` .. ``Z``, then ``AA``, ``AB``, ...: letters for any number of options (never punctuation)."""
    out = []
    for k in range(n):
        label, k = "", k + 1
        while k:
            k, rem = divmod(k - 1, 26)
            label = chr(65 + rem) + label
        out.append(label)
    return out


class JsonlChoiceTask(_JsonlSource, ChoiceTask):
    """Custom multiple-choice rows ``{"id", "question", "choices", "answer"[, "labels"]}``."""

    def _row_example(self, row: dict, where: str) -> Example:
        """Check one row and build its example."""
        _require(row, ("id", "question", "choices", "answer"), where)
        _one_kind(row, where)
        choices = row["choices"]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{where}: choices must be a list of at least 2 strings")
        labels = tuple(str(x) for x in row.get("labels") or option_labels(len(choices)))
        if len(labels) != len(choices):
            raise ValueError(f"{where}: {len(labels)} labels for {len(choices)} choices")
        answer = _choice_answer(row, labels, where)
        if not isinstance(row["question"], str):
            raise ValueError(f"{where}: question must be a string, got {row['question']!r}")
        return Example(example_id(row["id"], where), row["question"], tuple(choices), answer, labels)


class JsonlExactTask(_JsonlSource, ExactTask):
    """Custom exact-answer rows ``{"id", "prompt", "target"}``; plain prompts and targets are verbatim."""

    def _row_example(self, row: dict, where: str) -> Example:
        """Check one row and build its example."""
        _require(row, ("id", "prompt", "target"), where)
        _one_kind(row, where)
        if not isinstance(row["prompt"], str) or not isinstance(row["target"], str):
            raise ValueError(f"{where}: prompt and target must be strings")
        if not row["target"].strip():
            raise ValueError(f"{where}: the target is blank ({row['target']!r}); an exact answer needs text")
        return Example(id=example_id(row["id"], where), question=row["prompt"], answer=row["target"])

    def prompt(
        self, ex: Example, tokenizer: Any = None, style: str = "plain", scoring: str | None = None
    ) -> str:
        """The row's prompt verbatim (plain), or as the user message (chat)."""
        self._check_scoring(scoring)
        if effective_style(style, tokenizer) == "plain":
            return ex.question
        return _chat(tokenizer, ex.question)

    def target(
        self, ex: Example, scoring: str | None = None, style: str = "plain", tokenizer: Any = None
    ) -> str:
        """The row's target verbatim (plain), or without leading whitespace (chat)."""
        self._check_scoring(scoring)
        return str(ex.answer) if effective_style(style, tokenizer) == "plain" else str(ex.answer).lstrip()


PROMPT_KEYS = {"id", "prompt", "meta"}
"""The keys of a prompts-only row (``meta`` is kept, never read)."""


class JsonlPromptTask(JsonlExactTask):
    """Prompts without gold ``{"id", "prompt"}``: a path's "answer" is the base model's own continuation."""

    has_gold = False

    def _row_example(self, row: dict, where: str) -> Example:
        """Check one row and build its example (no answer)."""
        _require(row, ("id", "prompt"), where)
        if "target" in row or "choices" in row:
            raise ValueError(f"{where}: a gold row in a prompts-only file (its first row has no target)")
        if set(row) - PROMPT_KEYS:
            raise ValueError(f"{where}: prompts-only rows hold {sorted(PROMPT_KEYS)}, this one {sorted(row)}")
        if not isinstance(row["prompt"], str):
            raise ValueError(f"{where}: prompt must be a string")
        return Example(id=example_id(row["id"], where), question=row["prompt"], answer="")

    def target(self, ex: Example, scoring: str | None = None, style: str = "plain", tokenizer: Any = None):
        """Refused: prompts have no gold target."""
        raise ValueError(f"task {self.name!r} holds prompts only: it has no gold answers to score")

    def grade(self, ex: Example, text: str) -> bool:
        """Refused: prompts have no gold answer."""
        raise ValueError(f"task {self.name!r} holds prompts only: it has no gold answers to grade")


def jsonl_task(name: str) -> Task:
    """Build a jsonl task; its kind is decided by the first row of the file."""
    path = Path(name.removeprefix("jsonl:"))
    if not path.is_file():
        raise FileNotFoundError(f"task {name!r}: no file at {path.resolve()}")
    rows = _parse_jsonl(path, BadRows(str(path), strict=False, warn=False))  # load checks them
    number, first = next(rows, (None, None))
    if first is None:
        raise ValueError(f"{path}: no line holds a JSON object")
    _one_kind(first, f"{path} line {number}")
    if "prompt" in first and "target" in first:
        return JsonlExactTask(name, path)
    if "prompt" in first and set(first) <= PROMPT_KEYS:  # a search's paths file is not a prompts file
        return JsonlPromptTask(name, path)
    if "question" in first and "choices" in first:
        return JsonlChoiceTask(name, path)
    raise ValueError(
        f"{path} line {number}: cannot tell the row kind; expected keys id/prompt/target (exact), "
        f"id/question/choices/answer (multiple choice) or id/prompt (prompts only), got {sorted(first)}"
    )
