"""The built-in benchmarks: ARC-Easy/Challenge, MMLU, GSM8K and MATH (with its five levels).

Each class maps a released row (local jsonl copy, or the hub's version of it) to an :class:`Example`;
prompting and grading come from :class:`ChoiceTask` / :class:`ExactTask`.
"""

from __future__ import annotations

from .base import ChoiceTask, ExactTask, Example, _heldout


class ArcTask(ChoiceTask):
    """ARC-Easy or ARC-Challenge (labels as released: A-E or 1-4)."""

    def __init__(self, name: str, folder: str) -> None:
        self.name = name
        self.files = {s: f"arc/{folder}/{s}.jsonl" for s in self.splits}
        self.hub = ("ai2_arc", folder)

    def _convert(self, row: dict, source: str, index: int) -> Example:
        """ARC row -> example; the gold index is found by matching answerKey with the labels."""
        labels = tuple(str(label) for label in row["choices"]["label"])
        return Example(
            id=str(row["id"]),
            question=row["question"],
            choices=tuple(row["choices"]["text"]),
            answer=labels.index(str(row["answerKey"])),
            labels=labels,
        )


class MmluTask(ChoiceTask):
    """MMLU, 57 subjects; ``dev`` is the 5-shot pool, ``validation`` the evaluation split."""

    name = "mmlu"
    splits = ("dev", "validation")
    files = {"dev": "mmlu/dev.jsonl", "validation": "mmlu/validation.jsonl"}
    hub = ("cais/mmlu", "all")

    def header(self, ex: Example) -> str:
        """A line naming the subject, put before the question."""
        subject = ex.meta.get("subject", "").replace("_", " ")
        return f"The following is a question about {subject}.\n"

    def _convert(self, row: dict, source: str, index: int) -> Example:
        """MMLU row -> example; the answer is a letter locally and an index on the hub."""
        answer = row["answer"]
        answer = answer if isinstance(answer, int) else "ABCD".index(answer)
        return Example(
            id=f"mmlu-{row['subject']}-{source}-{index}",
            question=row["question"],
            choices=tuple(row["choices"]),
            answer=answer,
            labels=("A", "B", "C", "D"),
            meta={"subject": row["subject"]},
        )


class HeldoutExactTask(ExactTask):
    """Exact-answer task with only a released train file: validation is a hashed 10% of it."""

    splits = ("train", "validation", "all")

    def _source_split(self, split: str) -> str:
        """Every split reads the released train file."""
        return "train"

    def _keep(self, ex: Example, split: str) -> bool:
        """Route examples to train / validation by the hash of their id."""
        return split == "all" or _heldout(ex.id) == (split == "validation")


class Gsm8kTask(HeldoutExactTask):
    """GSM8K grade-school math; the gold answer is the number after ``####``."""

    name = "gsm8k"
    files = {"train": "gsm8k/train.jsonl"}
    hub = ("gsm8k", "main")

    def _convert(self, row: dict, source: str, index: int) -> Example:
        """GSM8K row -> example; the id uses the row number in the released file."""
        final = row["answer"].rsplit("####", 1)[-1].strip().replace(",", "")
        return Example(id=f"gsm8k-{source}-{index}", question=row["question"], answer=final)


class MathTask(HeldoutExactTask):
    """Hendrycks MATH, optionally filtered to one difficulty level."""

    files = {"train": "math/train.jsonl"}

    def __init__(self, level: int | None = None) -> None:
        self.level = level
        self.name = "math" if level is None else f"math:{level}"

    def _convert(self, row: dict, source: str, index: int) -> Example | None:
        """MATH row -> example; rows without an answer are skipped; level "?" becomes None."""
        if row.get("answer") is None:
            return None
        digits = row["level"].removeprefix("Level ").strip()
        level = int(digits) if digits.isdigit() else None
        meta = {"level": level, "type": row.get("type")}
        return Example(id=str(row["id"]), question=row["problem"], answer=str(row["answer"]), meta=meta)

    def _keep(self, ex: Example, split: str) -> bool:
        """Apply the level filter, then the held-out split."""
        if self.level is not None and ex.meta["level"] != self.level:
            return False
        return super()._keep(ex, split)


BUILDERS = {
    "arc_easy": lambda: ArcTask("arc_easy", "ARC-Easy"),
    "arc_challenge": lambda: ArcTask("arc_challenge", "ARC-Challenge"),
    "mmlu": MmluTask,
    "gsm8k": Gsm8kTask,
    "math": MathTask,
    **{f"math:{level}": (lambda level=level: MathTask(level)) for level in range(1, 6)},
}
