"""Tasks: dataset rows as examples, prompts and targets, grading, and the prompt-style choice.

- ``base``: ``Example``, the ``Task`` base class, its multiple-choice and exact-answer kinds, ``get_task``;
- ``builtin``: ARC, MMLU, GSM8K, MATH from local files; ``jsonl``: your own file; ``hub``: any HF dataset;
- ``grading``: final-answer extraction and comparison; ``style``: plain or chat prompts, chosen on training
  data.
"""

from .base import (
    CHOICE_SCORINGS,
    EXACT_SCORINGS,
    KNOWN_TASKS,
    STYLES,
    ChoiceTask,
    ExactTask,
    Example,
    Scoring,
    Style,
    Task,
    get_task,
    require_gold,
    resolve_data_dir,
    same_task,
)

__all__ = [
    "CHOICE_SCORINGS",
    "EXACT_SCORINGS",
    "KNOWN_TASKS",
    "STYLES",
    "ChoiceTask",
    "Scoring",
    "Style",
    "ExactTask",
    "Example",
    "Task",
    "get_task",
    "require_gold",
    "resolve_data_dir",
    "same_task",
]
