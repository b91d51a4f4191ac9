"""Several tasks evaluated together, pooled: every method's examples of all tasks as one sample.

``drllm eval --task a,b,c`` writes each task into its own folder and, beside them, ``results.md`` with every
task's rows and the ``pooled`` rows: per method and level, the examples of all tasks concatenated (the
same examples for every method, so the comparisons stay paired). Static paths and router budgets are still
calibrated per task; a pooled row shows a path only when every task chose the same one.
"""

from __future__ import annotations

import dataclasses


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
