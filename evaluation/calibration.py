"""Calibration on training examples, for the methods of ``run_eval``.

Which training examples to calibrate on, the router budget that reaches a layer level, the routers'
decision rates (for the ``routed-random`` control), and the threshold of ``routed-static``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
from pathlib import Path

from drllm.router import RoutedModel
from drllm.router.compute import unit_shares
from drllm.router.routers import TRAINED_ON_NAME
from drllm.search.mcts import SearchConfig, path_cost
from drllm.search.tasks.base import same_task

log = logging.getLogger("drllm.evaluation.evaluate")

STATIC_THRESHOLDS = (0.25, 0.5, 0.75, 0.9, 1.0)
"""Thresholds ``routed-static`` chooses from; 1.0 never deviates from the static path."""


def trained_on(routers: str | Path | None) -> frozenset[str]:
    """The examples the routers in folder ``routers`` were fitted on, as ``task/id`` keys (or none).

    Files drllm writes now say ``"qualified": true`` and list ``task/id``; an older file lists bare ids, which
    are kept as ``*/id``: such an id counts as trained on in every task (``was_trained``).

    Raises:
        ValueError: naming the file, when ``trained_on.json`` is not ``{"ids": [strings]}``.
    """
    path = None if routers is None else Path(routers) / TRAINED_ON_NAME
    if path is None or not path.is_file():
        return frozenset()
    try:
        data = json.loads(path.read_text())
        ids = data["ids"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a JSON object with an 'ids' list: {err}") from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError(f"{path}: 'ids' must be a list of strings")
    return frozenset(ids if data.get("qualified") is True else [f"*/{i}" for i in ids])


def was_trained(trained: frozenset[str], task: str, example_id) -> bool:
    """Whether example ``example_id`` of ``task`` is among ``trained`` (``trained_on``'s keys).

    A ``jsonl:`` task matches keys of any spelling of its file (relative or absolute, ``./``), resolved
    from the working directory.
    """
    if f"*/{example_id}" in trained:
        return True
    names = spellings(trained, task, os.getcwd())
    return any(f"{name}/{example_id}" in trained for name in names)


@functools.lru_cache(maxsize=64)
def spellings(trained: frozenset[str], task: str, cwd: str = "") -> tuple[str, ...]:
    """``task`` and the other names of its file that keys of ``trained`` begin with (``same_task``).

    Cached per working directory ``cwd``, from which relative names are resolved.
    """
    if not task.startswith("jsonl:"):
        return (task,)
    prefixes = {key[:k] for key in trained if key.startswith("jsonl:") for k, c in enumerate(key) if c == "/"}
    return (task, *sorted(p for p in prefixes if p != task and same_task(p, task)))


def fresh_examples(pool: list, exclude: frozenset[str], wanted: int, where: str, task: str = "") -> list:
    """The first ``wanted`` examples of ``pool`` (of ``task``) the routers were not trained on (``exclude``).

    Raises:
        ValueError: when every example of ``pool`` is excluded.
    """
    fresh = [ex for ex in pool if not was_trained(exclude, task, ex.id)]
    if not fresh:
        raise ValueError(
            f"the routers were trained on every example of {where}: none is left to calibrate on "
            f"({TRAINED_ON_NAME} lists {len(exclude)} ids)"
        )
    return fresh[:wanted]


class BudgetCalibrator:
    """Finds the router budget whose mean layers per prompt on calibration prompts reaches a level.

    Mean layers fall as the budget (a bias on every skip logit) rises, in steps. ``budget_for`` brackets
    the level by doubling, then bisects; every budget tried is cached, so levels share their probes.
    """

    def __init__(self, routed: RoutedModel, batches, iterations: int = 10):
        self.routed, self.batches, self.iterations = routed, batches, iterations
        self._seen: dict[float, tuple[float, list[list[int]]]] = {}
        # a sublayer unit (routers with 5 actions) counts its share of the layer's multiply-adds
        self._costs = SearchConfig(unit_costs=unit_shares(routed.model.config))

    def layers_at(self, budget: float) -> tuple[float, list[list[int]]]:
        """Mean layers per calibration prompt at ``budget``, and the decisions."""
        if budget not in self._seen:
            old = self.routed.budget
            self.routed.budget = budget
            try:
                decisions = [d for ids, mask in self.batches for d in self.routed.route(ids, mask).tolist()]
            finally:
                self.routed.budget = old
            layers = sum(path_cost(d, self._costs) for d in decisions) / len(decisions)
            self._seen[budget] = (layers, decisions)
        return self._seen[budget]

    def budget_for(self, level: float) -> tuple[float, float, list[list[int]]]:
        """``(budget, mean layers reached, decisions)`` closest to ``level``."""
        lo, hi = -1.0, 1.0  # layers(lo) should be >= level >= layers(hi)
        while self.layers_at(lo)[0] < level and lo > -1024:
            lo *= 2
        while self.layers_at(hi)[0] > level and hi < 1024:
            hi *= 2
        for _ in range(self.iterations):
            mid = (lo + hi) / 2
            if self.layers_at(mid)[0] > level:
                lo = mid
            else:
                hi = mid
        best = min(self._seen, key=lambda b: (abs(self._seen[b][0] - level), abs(b)))
        return best, self._seen[best][0], self._seen[best][1]


def decision_rates(decisions: list[list[int]]) -> list[list[float]]:
    """Per layer, the shares of skip, execute and repeat (and the sublayer units 3, 4 where any is taken)."""
    n = len(decisions)
    actions = 5 if any(d >= 3 for row in decisions for d in row) else 3
    columns = zip(*decisions, strict=True)
    return [[sum(1 for d in col if d == k) / n for k in range(actions)] for col in columns]


def draw_path(rates: list[list[float]], seed: int, index: int) -> list[int]:
    """A random path with each layer's decision drawn at the given rates (seeded per example)."""
    rng = random.Random(f"{seed}:{index}")
    return [rng.choices(range(len(r)), weights=r)[0] for r in rates]


def choose_threshold(ev, prepared, path, level: int) -> tuple[float, float]:
    """``(threshold, mean layers)`` for routing as deviations from ``path`` on the calibration examples.

    Of ``STATIC_THRESHOLDS``, the most accurate one whose mean layers stay within half a layer of ``level``
    (ties go to the higher threshold: fewer deviations). 1.0 runs ``path`` itself, so one always qualifies
    when ``path`` has ``level`` layers. The routers' default path is left set to the last one tried.
    """
    routers, L = ev.routed.routers, ev.routed.num_layers
    costs = SearchConfig(unit_costs=unit_shares(ev.routed.model.config))
    best = None
    for threshold in STATIC_THRESHOLDS:
        routers.set_default_path(path, threshold, protected=(0, 1, L - 1))
        outcomes, decisions = ev.routed_outcomes(prepared)
        layers = sum(path_cost(d, costs) for d in decisions) / len(decisions)
        accuracy = sum(o.reward >= 1.0 for o in outcomes) / len(outcomes)
        if abs(layers - level) <= 0.5 and (best is None or accuracy >= best[0]):
            best = (accuracy, threshold, layers)
    if best is None:
        raise ValueError(f"no threshold keeps {level} layers: the static path runs {sum(path)}")
    return best[1], best[2]


def calibration_examples(task, s, name: str, eval_split: str, evaluated: list) -> tuple[list, list[str]]:
    """Training examples to calibrate on, and the caveats every title must carry.

    Never an example the routers saw (``s.trained_on``), and none evaluated when others exist. Where only
    evaluated examples remain (a single-split task evaluated whole), they are used and a caveat says so.
    """
    caveats = []
    train = task.default_split_train
    pool = task.load(train, data_dir=s.data_dir, strict=s.strict)
    if s.trained_on:
        pool = fresh_examples(pool, s.trained_on, len(pool), f"the {train} split of {name}", task.name)
        log.info("%s: calibrating on %s examples the routers were not trained on", name, train)
    scored = {str(ex.id) for ex in evaluated}
    seen = {i for i in scored if was_trained(s.trained_on, task.name, i)}
    if seen:  # the routers were fitted on some evaluated examples: said in the log and every title
        seen_text = f"{len(seen)} of the {len(scored)} evaluated examples were the routers' training examples"
        caveats.append(seen_text)
        log.warning("task %r: %s (their scores favour the routers)", name, caveats[-1])
    if train == eval_split or any(str(ex.id) in scored for ex in pool):
        left = [ex for ex in pool if str(ex.id) not in scored]
        if left:
            pool = left
            text = "task %r: calibrating on the %d %s examples that are not evaluated"
            log.warning(text, name, len(pool), train)
        else:  # said in the log and in every title of the results, never silently
            caveats.append(f"calibrated on the evaluated examples: the {train} split has no others")
            log.warning("task %r: %s; evaluate fewer (limit) to calibrate apart", name, caveats[-1])
    return pool[: s.calibration], caveats
