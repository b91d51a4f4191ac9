"""Benchmark tasks: load dataset rows as :class:`Example`, build prompts and targets, grade outputs.

A task is either multiple choice (``kind == "choice"``: ARC, MMLU, multiple-choice jsonl), scored
by option log-likelihood (``"mc-loglik"``) or by the letter the model names (``"mc-letter"``), or
exact answer (``kind == "exact"``: GSM8K, MATH, exact-answer jsonl), scored by teacher forcing the
target (``"teacher-forced"``) or by decoding and grading (``"generate"``).

Data comes from local jsonl copies (see ``resolve_data_dir``); when a file is missing the Hugging
Face hub is tried (unless ``DRLLM_NO_HUB=1``). GSM8K and MATH release only a training split here, so
their ``"validation"`` split is a deterministic held-out part of the training file: the rows whose
sha256(id) is 0 mod 10 (about 10%), and ``"train"`` is the rest. ``"all"`` is the whole file. A
hash is used instead of a tail slice because the MATH file is sorted by subject.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Literal

from .grading import extract_choice, grade_exact
from .rows import (  # noqa: F401 - moved; importable from here as before
    MAX_PROMPT_CHARS,
    MAX_ROW_BYTES,
    BadRows,
    Example,
    _DuplicateKey,
    _hub_rows,
    _read_jsonl,
    _unique_keys,
    check_example,
    check_limit,
    example_id,
    read_jsonl_rows,
)

Scoring = Literal["mc-loglik", "mc-letter", "teacher-forced", "generate"]
Style = Literal["auto", "plain", "chat"]
CHOICE_SCORINGS = ("mc-loglik", "mc-letter")
EXACT_SCORINGS = ("teacher-forced", "generate")
STYLES = ("plain", "chat")
KNOWN_TASKS = ("arc_easy", "arc_challenge", "mmlu", "gsm8k", "math") + tuple(f"math:{n}" for n in range(1, 6))
_PROJECT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

log = logging.getLogger(__name__)
_WARNED: set[str] = set()


def _data_dir_candidates(data_dir: str | Path | None = None) -> list[Path]:
    """Directories where benchmark data may live, in the order they are tried."""
    if data_dir is not None:
        return [Path(data_dir)]
    env = os.environ.get("DRLLM_DATA")
    if env:
        return [Path(env)]
    return [Path.cwd().parent / "shared" / "data", _PROJECT_DATA]


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """Find the benchmark data directory.

    Args:
        data_dir: An explicit directory; wins when given.

    Returns:
        ``data_dir`` if given, else ``$DRLLM_DATA``, else the first of ``../shared/data`` (relative
        to the working directory) and ``<project root>/../shared/data`` that exists (the latter when
        neither does).
    """
    candidates = _data_dir_candidates(data_dir)
    return next((c for c in candidates if c.is_dir()), candidates[-1])


def effective_style(style: str, tokenizer: Any = None) -> str:
    """The prompt style actually used: "chat" falls back to "plain" without a chat template.

    Args:
        style: "plain" or "chat".
        tokenizer: A tokenizer, possibly with a ``chat_template``.

    Returns:
        "plain" or "chat".

    Raises:
        ValueError: If the style is unknown.
    """
    if style not in STYLES:
        raise ValueError(f"unknown prompt style {style!r}; expected one of {STYLES}")
    if style == "chat" and not getattr(tokenizer, "chat_template", None):
        return "plain"
    return style


def _chat(tokenizer: Any, content: str) -> str:
    """Wrap one user message with the tokenizer's chat template, ready for the reply."""
    messages = [{"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _heldout(identifier: str) -> bool:
    """Whether an id falls in the held-out 10% (sha256 of the id is 0 mod 10)."""
    return int(hashlib.sha256(identifier.encode()).hexdigest(), 16) % 10 == 0


class Task(abc.ABC):
    """Base class of every task; subclasses set the class attributes and implement ``_convert``.

    Attributes:
        name: Task name as given to :func:`get_task`.
        kind: "choice" or "exact".
        default_scoring: Scoring used when none is given.
        scorings: Scorings this task supports.
        default_split_eval: Split to evaluate on.
        splits: Splits :meth:`load` accepts.
        has_gold: False for prompts-only rows: paths are judged by closeness to the base model alone.
    """

    name: str = ""
    kind: str = "exact"
    has_gold: bool = True
    default_scoring: str = "teacher-forced"
    scorings: tuple[str, ...] = EXACT_SCORINGS
    default_split_eval: str = "validation"
    splits: tuple[str, ...] = ("train", "validation")
    files: dict[str, str] = {}
    hub: tuple[str, str] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    @property
    def default_split_train(self) -> str:
        """The split training data (search paths, angular calibration) comes from: ``train`` if it exists."""
        if "train" in self.splits:
            return "train"
        others = [s for s in self.splits if s != self.default_split_eval]
        return others[0] if others else self.splits[0]

    def load(
        self,
        split: str = "train",
        data_dir: str | Path | None = None,
        limit: int | None = None,
        strict: bool = False,
    ) -> list[Example]:
        """Load a split as examples.

        Args:
            split: Split name; see ``splits``.
            data_dir: Data directory; see :func:`resolve_data_dir`.
            limit: Keep only the first ``limit`` examples.
            strict: raise on the first row that cannot be scored fairly (see :func:`check_example`);
                when False, skip it with a warning naming it (see :class:`BadRows`).

        Returns:
            The examples, in file order.

        Raises:
            ValueError: If the split is unknown.
            FileNotFoundError: If the file is missing locally and the hub fallback fails.
        """
        check_limit(limit)
        if split not in self.splits:
            raise ValueError(f"task {self.name!r} has no split {split!r}; available splits: {self.splits}")
        source = self._source_split(split)
        rows = self._rows(source, data_dir)
        bad = BadRows(f"task {self.name!r} split {source!r}", strict)
        examples = []
        for i, row in enumerate(rows):
            ex = self._convert(row, source, i)
            if ex is not None and self._keep(ex, split):
                ex = bad.check(lambda ex=ex: ex, f"task {self.name!r} split {source!r} row {i}")
                examples += [ex] if ex is not None else []
        bad.done(len(examples))
        return examples[:limit] if limit is not None else examples

    def _source_split(self, split: str) -> str:
        """The released split a requested split is read from."""
        return split

    def _keep(self, ex: Example, split: str) -> bool:
        """Whether an example belongs to the requested split (and any filter)."""
        return True

    def _rows(self, source: str, data_dir: str | Path | None) -> list[dict]:
        """Raw rows of a released split: the local file, else the hub."""
        relative = self.files[source]
        tried = [base / relative for base in _data_dir_candidates(data_dir)]
        for path in tried:
            if path.is_file():
                return _read_jsonl(path)
        hub_note = "no hub fallback for this task"
        if self.hub is not None:
            try:
                return _hub_rows(self.hub, source)
            except Exception as err:  # noqa: BLE001 - any hub failure means "not available"
                hub_note = f"hub fallback datasets.load_dataset{self.hub} failed: {type(err).__name__}: {err}"
        places = ", ".join(str(p) for p in tried)
        raise FileNotFoundError(
            f"data for task {self.name!r} split {source!r} not found; looked in: {places}; {hub_note}. "
            "Pass data_dir or set DRLLM_DATA."
        )

    def _convert(self, row: dict, source: str, index: int) -> Example | None:
        """Turn one raw row into an example (None to skip it); tasks that read released files override it."""
        raise TypeError(f"{type(self).__name__} reads no released data files; it must override load()")

    def _check_scoring(self, scoring: str | None) -> str:
        """Default and validate a scoring name."""
        scoring = scoring or self.default_scoring
        if scoring not in self.scorings:
            raise ValueError(
                f"task {self.name!r} has no scoring {scoring!r}; expected one of {self.scorings}"
            )
        return scoring

    @abc.abstractmethod
    def prompt(
        self, ex: Example, tokenizer: Any = None, style: str = "plain", scoring: str | None = None
    ) -> str:
        """Build the prompt text for an example; see the subclasses for the formats."""

    @abc.abstractmethod
    def target(
        self, ex: Example, scoring: str | None = None, style: str = "plain", tokenizer: Any = None
    ) -> str:
        """Text appended to the prompt for teacher forcing."""

    @abc.abstractmethod
    def grade(self, ex: Example, text: str) -> bool:
        """Grade a generated completion."""


class ChoiceTask(Task):
    """Multiple-choice task: options scored by log-likelihood or named by label."""

    kind = "choice"
    default_scoring = "mc-loglik"
    scorings = CHOICE_SCORINGS

    def header(self, ex: Example) -> str:
        """Text put before the question (MMLU names the subject); empty by default."""
        return ""

    def prompt(
        self, ex: Example, tokenizer: Any = None, style: str = "plain", scoring: str | None = None
    ) -> str:
        r"""Build the prompt.

        Plain loglik: ``"Question: {q}\nAnswer:"``. Plain letter: the question, one ``"A. option"``
        line per option, then ``"Answer:"``. Chat: the same content as one user message, asking for
        the letter in letter scoring, through the tokenizer's chat template.

        Args:
            ex: The example.
            tokenizer: Needed for the chat style (falls back to plain without a chat template).
            style: "plain" or "chat".
            scoring: "mc-loglik" or "mc-letter" (default: ``default_scoring``).

        Returns:
            The prompt text.
        """
        scoring = self._check_scoring(scoring)
        options = "\n".join(f"{label}. {text}" for label, text in zip(ex.labels, ex.choices, strict=True))
        if effective_style(style, tokenizer) == "plain":
            if scoring == "mc-loglik":
                return f"{self.header(ex)}Question: {ex.question}\nAnswer:"
            return f"{self.header(ex)}Question: {ex.question}\n{options}\nAnswer:"
        if scoring == "mc-loglik":
            return _chat(tokenizer, f"{self.header(ex)}{ex.question}")
        ask = "Answer with the label of the correct option only."
        return _chat(tokenizer, f"{self.header(ex)}{ex.question}\n\n{options}\n\n{ask}")

    def continuations(
        self, ex: Example, scoring: str, style: str = "plain", tokenizer: Any = None
    ) -> list[str]:
        """Texts appended to the prompt, one per option.

        Args:
            ex: The example.
            scoring: "mc-loglik" (option texts) or "mc-letter" (labels).
            style: Prompt style; plain continuations start with a space, chat ones do not.
            tokenizer: Decides whether "chat" falls back to plain.

        Returns:
            One continuation per option.
        """
        scoring = self._check_scoring(scoring)
        space = " " if effective_style(style, tokenizer) == "plain" else ""
        items = ex.choices if scoring == "mc-loglik" else ex.labels
        return [f"{space}{item}" for item in items]

    def target(
        self, ex: Example, scoring: str | None = None, style: str = "plain", tokenizer: Any = None
    ) -> str:
        """The gold continuation (see :meth:`continuations`)."""
        return self.continuations(ex, self._check_scoring(scoring), style, tokenizer)[int(ex.answer)]

    def grade(self, ex: Example, text: str) -> bool:
        """True when the completion names the gold option (by label or by its text)."""
        return extract_choice(text, ex.labels, ex.choices) == ex.answer


class ExactTask(Task):
    """Exact-answer task: the model writes a final answer."""

    def prompt(
        self, ex: Example, tokenizer: Any = None, style: str = "plain", scoring: str | None = None
    ) -> str:
        r"""Build the prompt: plain ``"Question: {q}\nAnswer:"``, or chat asking for only the answer.

        Args:
            ex: The example.
            tokenizer: Needed for the chat style (falls back to plain without a chat template).
            style: "plain" or "chat".
            scoring: "teacher-forced" or "generate"; both use the same prompt.

        Returns:
            The prompt text.
        """
        self._check_scoring(scoring)
        if effective_style(style, tokenizer) == "plain":
            return f"Question: {ex.question}\nAnswer:"
        ask = "Give only the final answer, with no explanation."
        return _chat(tokenizer, f"{ex.question}\n\n{ask}")

    def target(
        self, ex: Example, scoring: str | None = None, style: str = "plain", tokenizer: Any = None
    ) -> str:
        """The answer as the model should write it: ``" {answer}"`` plain, ``"{answer}"`` chat."""
        self._check_scoring(scoring)
        space = " " if effective_style(style, tokenizer) == "plain" else ""
        return f"{space}{ex.answer}"

    def grade(self, ex: Example, text: str) -> bool:
        """True when the completion's final answer matches the gold answer."""
        return grade_exact(text, str(ex.answer))


def require_gold(task: Task, what: str) -> None:
    """Refuse a prompts-only task (``has_gold`` False) where ``what`` needs gold answers."""
    if not task.has_gold:
        raise ValueError(
            f"task {task.name!r} holds prompts only (no gold answers), and {what} needs gold; prompts alone "
            "serve drllm eval, drllm train --objective kl and drllm signal --target kl"
        )


def get_task(name: str, **hub_fields) -> Task:
    """Build a task by name.

    Args:
        name: One of :data:`KNOWN_TASKS`, ``"jsonl:PATH"`` for a custom file, or ``"hf:DATASET"``.
        **hub_fields: Column mapping of ``hf:`` tasks (``question_field``, ``answer_field``,
            ``choices_field``, ``config``); None values are ignored.

    Returns:
        The task.

    Raises:
        ValueError: If the name is unknown.
    """
    if name.startswith("hf:"):
        from .hub import hub_task

        return hub_task(name, **{k: v for k, v in hub_fields.items() if v is not None})
    if name.startswith("jsonl:"):
        from .jsonl import jsonl_task

        return jsonl_task(name)
    from .builtin import BUILDERS

    if name not in BUILDERS:
        raise ValueError(
            f"unknown task {name!r}; known tasks: {', '.join(KNOWN_TASKS)}, 'jsonl:PATH' or 'hf:DATASET'"
        )
    return BUILDERS[name]()


def same_task(a: str, b: str) -> bool:
    """Whether two task names name one task: equal, or two spellings of one ``jsonl:`` file."""
    if a == b:
        return True
    prefix = "jsonl:"
    if not (a.startswith(prefix) and b.startswith(prefix)):
        return False
    first, second = (Path(name[len(prefix) :]).expanduser() for name in (a, b))
    try:
        return first.exists() and second.exists() and first.samefile(second)
    except OSError:
        return False
