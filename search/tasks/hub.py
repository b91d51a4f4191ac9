r"""Any Hugging Face dataset as a task (``hf:NAME``), with a column mapping.

``hf:NAME`` loads ``datasets.load_dataset(NAME, config, split=...)``; NAME may be a hub id (when online) or a
local folder or data file. ``question_field`` and ``answer_field`` name the columns; with ``choices_field``
the task is multiple choice (the answer may be an index, a label such as "B", or the text of the correct
option), otherwise exact answer (prompt ``"Question: {q}\nAnswer:"``, target the answer text).
"""

from __future__ import annotations

from pathlib import Path

from .base import BadRows, ChoiceTask, ExactTask, Example, Task, check_limit
from .jsonl import option_labels


class _HubSource:
    """Loading and column mapping shared by the two hub task kinds."""

    def __init__(
        self, name: str, question_field: str, answer_field: str, choices_field: str | None, config: str | None
    ) -> None:
        self.name = name
        self.dataset = name.split(":", 1)[1]
        if not self.dataset:
            raise ValueError("hf: needs a dataset name or path, as in hf:openai/gsm8k")
        self.fields = {"question": question_field, "answer": answer_field, "choices": choices_field}
        self.config = config
        self.splits = ("train", "validation", "test")
        self.default_split_eval = "validation"

    def load(
        self,
        split: str = "train",
        data_dir: str | Path | None = None,
        limit: int | None = None,
        strict: bool = False,
    ) -> list:
        """Load a split of the dataset and map its columns to examples.

        Each is checked (``check_example``): a bad row raises when ``strict``, else it is skipped with a
        warning.
        """
        from datasets import load_dataset

        check_limit(limit)
        try:
            data = load_dataset(self.dataset, self.config, split=split)
        except Exception as err:  # datasets raises many types for missing data or no network
            raise FileNotFoundError(
                f"could not load dataset {self.dataset!r} (config {self.config!r}, split {split!r}): "
                f"{type(err).__name__}: {err}"
            ) from err
        missing = [f for f in self.fields.values() if f is not None and f not in data.column_names]
        if missing:
            raise ValueError(
                f"dataset {self.dataset!r} has no column {missing[0]!r}; columns: {data.column_names}"
            )
        bad = BadRows(f"dataset {self.dataset!r} split {split!r}", strict)
        examples = []
        for i in range(len(data)):
            if limit is not None and len(examples) >= limit:
                break
            where = f"dataset {self.dataset!r} split {split!r} row {i}"
            ex = bad.check(lambda i=i: self._example(data[i], i, split), where)
            examples += [ex] if ex is not None else []
        bad.done(len(examples))
        return examples

    def _text(self, row: dict, key: str) -> str:
        value = row[self.fields[key]]
        if value is None:
            raise ValueError(f"dataset {self.dataset!r}: column {self.fields[key]!r} is null in a row")
        return str(value)


class HubExactTask(_HubSource, ExactTask):
    """Exact-answer task over a mapped dataset."""

    def _example(self, row: dict, index: int, split: str) -> Example:
        answer = self._text(row, "answer").strip()
        if not answer:
            raise ValueError(f"dataset {self.dataset!r} row {index}: the answer is blank")
        return Example(
            id=f"{self.dataset}-{split}-{index}", question=self._text(row, "question"), answer=answer
        )


class HubChoiceTask(_HubSource, ChoiceTask):
    """Multiple-choice task over a mapped dataset."""

    def _example(self, row: dict, index: int, split: str) -> Example:
        where = f"dataset {self.dataset!r} row {index}"
        choices = row[self.fields["choices"]]
        if isinstance(choices, dict) and "text" in choices:  # the ai2_arc layout
            labels, choices = tuple(str(x) for x in choices.get("label", [])), choices["text"]
        else:
            labels = ()
        if not isinstance(choices, list) or len(choices) < 2:
            raise ValueError(f"{where}: {self.fields['choices']!r} must be a list of at least 2 options")
        choices = tuple(str(c) for c in choices)
        labels = labels if len(labels) == len(choices) else tuple(option_labels(len(choices)))
        return Example(
            id=f"{self.dataset}-{split}-{index}",
            question=self._text(row, "question"),
            choices=choices,
            answer=_gold(row[self.fields["answer"]], labels, choices, where),
            labels=labels,
        )


def _gold(answer, labels: tuple[str, ...], choices: tuple[str, ...], where: str) -> int:
    """The gold option index from an index, a label or the option text."""
    if isinstance(answer, bool):
        raise ValueError(f"{where}: answer {answer!r} is not an index, a label or an option")
    if isinstance(answer, int) and 0 <= answer < len(choices):
        return answer
    text = str(answer).strip()
    for pool in (labels, choices):
        if text in pool:
            return pool.index(text)
    raise ValueError(f"{where}: answer {answer!r} is not an index, a label {labels} or one of the options")


def hub_task(
    name: str,
    question_field: str = "question",
    answer_field: str = "answer",
    choices_field: str | None = None,
    config: str | None = None,
) -> Task:
    """Build an ``hf:NAME`` task with the given column mapping."""
    cls = HubChoiceTask if choices_field else HubExactTask
    return cls(name, question_field, answer_field, choices_field, config)
