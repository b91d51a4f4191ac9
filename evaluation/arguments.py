"""``run_eval``'s arguments checked before anything runs: the task list, the output folder and the settings.

Every refusal here names the flag and the problem, and happens before the model loads or a file is written.
"""

from __future__ import annotations

import numbers
import os
import re
from pathlib import Path

from drllm.search.tasks.base import same_task

from .results import UNIT_BASELINES

BASELINES = ("greedy", "block-influence", "angular", "drop-last", "random")
JSONL = "jsonl:"


def task_names(task: str) -> list[str]:
    """The task names of a comma-separated list; a ``jsonl:`` file whose name holds commas stays whole.

    Raises:
        ValueError: for an empty list, a file name that can be read two ways (``jsonl:a`` and
            ``jsonl:a,b.jsonl`` both files), one task named twice (also as two spellings of one file), or
            two names that would share an output folder.
    """
    raw = task.split(",")
    names: list[str] = []
    i = 0
    while i < len(raw):
        name, end = raw[i].strip(), i + 1
        if name.startswith(JSONL):
            files = [j for j in range(i + 1, len(raw) + 1) if _is_file(",".join(raw[i:j]))]
            if len(files) > 1:
                first, longer = (",".join(raw[i:j]).strip() for j in files[:2])
                raise ValueError(
                    f"--task: {first!r} and {longer!r} are both files, so the comma-separated task list "
                    "cannot tell them apart; rename one of them"
                )
            if files:
                name, end = ",".join(raw[i : files[0]]).strip(), files[0]
        if name:
            names.append(name)
        i = end
    if not names:
        raise ValueError("no task given")
    for k, name in enumerate(names):
        for other in names[:k]:
            if same_task(other, name):
                same = "twice" if other == name else f"twice, as {other!r} and {name!r} (one file)"
                raise ValueError(f"--task names the task {name!r} {same}: give each task once")
    folders: dict[str, str] = {}
    for name in names:
        if slug(name) in folders:
            raise ValueError(
                f"tasks {folders[slug(name)]!r} and {name!r} would share the output folder {slug(name)!r}; "
                "evaluate them into separate outputs"
            )
        folders[slug(name)] = name
    return names


def _is_file(name: str) -> bool:
    name = name.strip()
    return name.startswith(JSONL) and Path(name[len(JSONL) :]).expanduser().is_file()


def slug(name: str) -> str:
    """The folder name of a task's results when several tasks are evaluated."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "task"


def refuse_task_in_output(output: str | os.PathLike, names: list[str]) -> None:
    """Refuse an output folder holding (at any depth) a ``jsonl:`` task file: publishing would replace it."""
    folder = Path(output).expanduser()
    roots = {Path(os.path.abspath(folder)), folder.resolve()}
    for name in names:
        if not name.startswith(JSONL):
            continue
        path = Path(name[len(JSONL) :]).expanduser()
        for where in {Path(os.path.abspath(path)), path.resolve()}:
            if any(where.is_relative_to(root) for root in roots):
                raise ValueError(
                    f"--output {output} holds the task file of {name!r} ({where}); the evaluation replaces "
                    "the files of its output folder: choose an --output outside it, or move the task file"
                )


def baseline_names(baselines) -> tuple[str, ...]:
    """``baselines`` as a tuple of names (a string is a comma-separated list, as on the command line)."""
    if isinstance(baselines, str):
        baselines = baselines.split(",")
    return tuple(b.strip() if isinstance(b, str) else b for b in baselines)


def level_values(values, what: str) -> tuple | None:
    """``target_layers`` or ``target_compute`` as a tuple (a single number is one level)."""
    if values is None:
        return None
    if isinstance(values, numbers.Real) and not isinstance(values, bool):
        return (values,)
    if isinstance(values, str):
        raise ValueError(f"{what} must be numbers, got {values!r}")
    return tuple(values)


def check_levels(target_layers, target_compute) -> None:
    """Refuse target layers below 1 and target compute outside (0, 1) before the model loads."""
    if target_layers is not None and target_compute is not None:
        raise ValueError("give target layers or target compute, not both")
    for value in target_layers or ():
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or value < 1
            or not float(value).is_integer()
        ):
            raise ValueError(
                f"--target-layers: target layers must be whole numbers of layers in 1 .. L - 1 "
                f"(L: the model's layers), got {value!r}"
            )
    for value in target_compute or ():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
            raise ValueError(
                f"--target-compute: target compute must be shares of the full model in (0, 1) such as "
                f"0.9, got {value!r}"
            )


def check_eval_arguments(
    baselines,
    calibration,
    batch_size,
    greedy_examples,
    fidelity_tokens,
    random_seeds,
    limit,
    max_new_tokens=1,
) -> None:
    """Refuse a bad evaluation setting before anything runs (``run_eval`` and the demo, before its search)."""
    known = ", ".join(BASELINES + UNIT_BASELINES)
    blank = [b for b in baselines if isinstance(b, str) and not b.strip()]
    if blank:
        raise ValueError(f"--baselines holds an empty name ({list(baselines)!r}); known baselines: {known}")
    unknown = [b for b in baselines if b not in BASELINES + UNIT_BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; known baselines: {known}")
    twice = sorted({b for b in baselines if list(baselines).count(b) > 1})
    if twice:
        raise ValueError(f"--baselines names {', '.join(twice)} more than once: give each baseline once")
    for name, value, least in (("calibration", calibration, 1), ("batch_size", batch_size, 1)):
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")
    if greedy_examples is not None and (
        isinstance(greedy_examples, bool) or not isinstance(greedy_examples, int) or greedy_examples < 1
    ):
        raise ValueError(f"greedy_examples must be a whole number >= 1, got {greedy_examples!r}")
    _check_plotting()  # before the evaluation runs, not after it, when the figures are drawn
    for name, value, least in (("fidelity_tokens", fidelity_tokens, 0), ("random_seeds", random_seeds, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(
            "--max-new-tokens (the decoding budget of exact-answer tasks scored by generation) must be a "
            f"whole number >= 1, got {max_new_tokens!r}"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a whole number >= 1 (or None for the whole split), got {limit!r}")
    if "random" in baselines and random_seeds == 0:
        raise ValueError("the random baseline needs random_seeds >= 1 (or leave 'random' out of baselines)")


def check_prompts_only(name: str, task, scoring, fidelity_tokens: int) -> None:
    """A prompts-only task is judged on the base model's continuation: it needs one, and no gold scoring."""
    if task.has_gold:
        return
    if scoring not in (None, "teacher-forced"):
        raise ValueError(f"task {name!r} holds prompts only: scoring {scoring!r} needs gold answers")
    if fidelity_tokens < 1:
        raise ValueError(
            f"task {name!r} holds prompts only: paths are judged on the base model's continuation, "
            "so fidelity_tokens must be >= 1"
        )


def _check_plotting() -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError("drllm eval draws figures with matplotlib: pip install 'drllm[eval]'")
