"""Several tasks evaluated together, pooled: every method's examples of all tasks as one sample.

``drllm eval --task a,b,c`` writes each task into its own folder and, beside them, ``results.md`` with every
task's rows and the ``pooled`` rows: per method and level, the examples of all tasks concatenated (the
same examples for every method, so the comparisons stay paired). Static paths and router budgets are still
calibrated per task; a pooled row shows a path only when every task chose the same one.

A prompts-only task's accuracy means something else (the base model's whole continuation reproduced), so
beside tasks with gold answers it is left out of the pool: the pooled rows are the gold tasks' examples,
and the title of ``results.md`` names the tasks left out. Prompts-only tasks alone are pooled together.
"""

from __future__ import annotations

import dataclasses

from .results import method_rows


def pool_methods(per_task: list[tuple[list, str]]) -> tuple[list, list[str]]:
    """Methods of several tasks merged by key, and the scoring of every pooled example.

    Args:
        per_task: per task, its evaluated methods (base first) and its scoring.

    Returns:
        The merged methods (base first; only keys every task evaluated) and, per pooled example, the
        scoring of its task (agreement with the base model's answer is judged by it).
    """
    keys = [{m.key: m for m in methods} for methods, _ in per_task]
    shared = [k for k in keys[0] if all(k in other for other in keys[1:])]
    merged = []
    for key in shared:
        parts = [k[key] for k in keys]
        first = parts[0]
        paths = {p.path for p in parts}
        budgets = {p.budget for p in parts}
        reached = [p.calibration_layers for p in parts if p.calibration_layers is not None]
        merged.append(
            dataclasses.replace(
                first,
                path=first.path if len(paths) == 1 else None,
                budget=first.budget if len(budgets) == 1 else None,
                calibration_layers=sum(reached) / len(reached) if len(reached) == len(parts) else None,
                stand_ins=None,
                outcomes=[o for p in parts for o in p.outcomes],
                layers=[x for p in parts for x in p.layers],
                tokens=[x for p in parts for x in p.tokens],
                decisions=[x for p in parts for x in p.decisions],
                macs=[x for p in parts for x in p.macs],
                seconds=sum(p.seconds for p in parts),
            )
        )
    scorings = [scoring for methods, scoring in per_task for _ in methods[0].outcomes]
    return merged, scorings


def pooled_rows(names: list[str], tasks: list, per_task: list[tuple[list, str]]) -> tuple[list, str]:
    """The ``pooled`` rows of several evaluated tasks, and the note saying what they pool.

    Args:
        names: the tasks' names, in order.
        tasks: the tasks (``has_gold`` tells a prompts-only one).
        per_task: per task, its evaluated methods (base first) and its scoring.

    Returns:
        The rows (none when fewer than two tasks can be pooled) and a note for the report's title.
    """
    gold = [k for k, task in enumerate(tasks) if task.has_gold]
    kept = gold if gold else list(range(len(tasks)))
    left = [names[k] for k in range(len(tasks)) if k not in kept]
    note = ""
    if left:
        note = (
            f"prompts-only tasks ({', '.join(left)}) are not pooled with tasks with gold answers: their "
            "accuracy means reproducing the base model's continuation"
        )
    if len(kept) < 2:
        return [], f"no pooled rows: {note}"
    merged, scorings = pool_methods([per_task[k] for k in kept])
    which = f"all {len(kept)} tasks" if not left else f"the {len(kept)} tasks with gold answers"
    pooled = f"pooled: the {len(scorings)} examples of {which} together"
    return method_rows("pooled", merged, scorings), "; ".join(filter(None, [pooled, note]))
