"""Supervision you can trust: continuous scores for every path, a single-edit sweep, and label controls.

A 0/1 reward on one example is a weak label: on 4-way multiple choice a perturbed path flips a small margin
by luck. So every search here keeps, beside the reward, a continuous score of every path it evaluates
(``Outcome.margin``: the gold option's log-likelihood minus the best wrong option's, or the target's mean
token log-probability), and can run three controls whose numbers say how much its labels can be trusted:

- ``sweep``: before the tree, one batched call scores every single-layer skip and repeat (2L paths, cheap
  with prefix reuse); their margins are recorded and their rewards primed into the tree (it runs exactly
  as if it had asked for them).
- ``control="wrong-gold"``: the same search, same seed, on the same example with a random wrong option
  (seeded by the example id) declared gold, primed with the same sweep rescored for that option (under
  ``mc-loglik``; other scorings evaluate the control's paths themselves). The share of examples where it
  "fixes" the wrong answer is the lucky-fix rate: what the search finds with no signal at all. A real fix
  counts as trusted only when its margin gain beats what the control reached on that example. With
  ``fix_margin`` > 0, a fix (of the example or of the control) must also win by more than that margin,
  in nats: the control's fix rate then says how often a fix that clear is luck.
- ``seeds=2``: a second tree with another seed. Two-seed agreement is the Jaccard overlap of the two
  chosen paths' edits (layers not executed exactly once); the record keeps only the edits both agree on
  (that path is scored too).

A path is *safe* for an example the base model gets right when it keeps the right answer with a margin of
at least ``safe_margin``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .evaluator import Outcome, PathEvaluator
from .mcts import PathSearch, SearchConfig, path_cost, tree_seed
from .records import SearchRecord
from .reliability import (  # noqa: F401 - moved; importable from here as before
    FIX_MARGINS,
    _best_correct_margin,
    _best_path,
    _edits,
    _jaccard,
    format_reliability,
    reliability,
)

CONTROLS = ("wrong-gold",)
"""Margins (nats) at which ``reliability`` compares the fix rates of the gold and of the wrong gold."""


@dataclass(frozen=True)
class Supervision:
    """What a search records and checks beside the tree (see the module docstring)."""

    sweep: bool = True
    control: str | None = None
    seeds: int = 1
    safe_margin: float = 0.0
    fix_margin: float = 0.0

    def __post_init__(self) -> None:
        if self.control is not None and self.control not in CONTROLS:
            raise ValueError(f"unknown control {self.control!r}; known controls: {', '.join(CONTROLS)}")
        if self.seeds not in (1, 2):
            raise ValueError(f"seeds must be 1 or 2, got {self.seeds}")
        if not (isinstance(self.fix_margin, (int, float)) and 0.0 <= self.fix_margin < math.inf):
            raise ValueError(f"fix_margin must be a finite number >= 0, got {self.fix_margin!r}")


@dataclass
class _Tree:
    role: str  # "main", "seed1" or "control"
    prepared: object
    tree: PathSearch
    scores: dict = field(default_factory=dict)  # path -> Outcome
    path: tuple | None = None


@dataclass
class _Example:
    prepared: object
    trees: list[_Tree]
    sweep: dict[tuple, Outcome] = field(default_factory=dict)
    control_gold: int | None = None


def single_edits(num_layers: int) -> list[tuple[int, ...]]:
    """Every path one skip or one repeat away from all-execute (skip first, by layer)."""
    every = (1,) * num_layers
    skips = [every[:i] + (0,) + every[i + 1 :] for i in range(num_layers)]
    repeats = [every[:i] + (2,) + every[i + 1 :] for i in range(num_layers)]
    return skips + repeats


def wrong_gold(example, num_options: int, gold: int, seed: int) -> int:
    """A random wrong option for the control, seeded by the run's seed and the example id."""
    wrong = [k for k in range(num_options) if k != gold]
    return random.Random(f"wrong-gold:{seed}:{example.id}").choice(wrong)


def search_examples(
    evaluator: PathEvaluator,
    todo: list,
    config: SearchConfig,
    supervision: Supervision,
    seed: int,
    batch_size: int,
    write: Callable[[SearchRecord], None],
    meta: dict,
    bar,
    log: Callable[[dict], None] | None = None,
) -> None:
    """Search ``todo`` in a window of ``batch_size`` examples, all trees in lockstep; write each record."""
    L = evaluator.routed.num_layers
    queue = list(reversed(todo))
    active: list[_Example] = []
    start, finished, improved = time.perf_counter(), 0, 0
    while queue or active:
        while queue and len(active) < batch_size:
            active.append(_start(evaluator, queue.pop(), config, supervision, seed, L))
        trees = [t for ex in active for t in ex.trees if not t.tree.done]
        for t in trees:
            t.path = t.tree.request()
        asking = [t for t in trees if t.path is not None]
        if asking:
            outcomes = evaluator.outcomes([(t.prepared, t.path) for t in asking])
            for t, o in zip(asking, outcomes, strict=True):
                t.scores[t.path] = o
                t.tree.give(o.reward)
        for ex in [ex for ex in active if all(t.tree.done for t in ex.trees)]:
            record = _record(evaluator, ex, meta, supervision, L)
            write(record)
            evaluator.release(ex.prepared)
            active.remove(ex)
            finished += 1
            improved += int(record.layers < L and record.reward >= 1.0 or record.reward > record.base_reward)
            if log is not None:
                rate = evaluator.paths_evaluated / max(time.perf_counter() - start, 1e-9)
                log(
                    {
                        "search/done": finished,
                        "search/improved_share": improved / finished,
                        "search/layers": record.layers,
                        "search/base_reward": record.base_reward,
                        "search/paths_per_s": rate,
                    }
                )
        rate = evaluator.paths_evaluated / max(time.perf_counter() - start, 1e-9)
        bar.n = bar.total - len(queue) - len(active)
        bar.set_postfix(
            paths_per_s=f"{rate:.1f}", improved=f"{improved / max(finished, 1):.0%}", refresh=False
        )
        bar.refresh()


def _start(evaluator, example, config, supervision: Supervision, seed: int, L: int) -> _Example:
    prepared = evaluator.prepare([example])[0]
    trees = [_Tree("main", prepared, PathSearch(L, tree_seed(seed, str(example.id)), config))]
    if supervision.seeds == 2:
        trees.append(_Tree("seed1", prepared, PathSearch(L, tree_seed(seed + 1, str(example.id)), config)))
    ex = _Example(prepared, trees)
    if supervision.sweep:
        edits = single_edits(L)
        for path, outcome in zip(edits, evaluator.outcomes([(prepared, p) for p in edits]), strict=True):
            ex.sweep[path] = outcome
    if supervision.control == "wrong-gold" and len(prepared.targets) > 1:
        ex.control_gold = wrong_gold(example, len(prepared.targets), prepared.gold, seed)
        control = prepared.with_gold(ex.control_gold)  # shares the prefix the sweep recorded
        trees.append(_Tree("control", control, PathSearch(L, tree_seed(seed, str(example.id)), config)))
    rescorable = all(o.loglik is not None for o in ex.sweep.values())
    for t in trees:
        swept = ex.sweep  # empty without the sweep: nothing is primed
        if t.role == "control":  # the same sweep, rescored for the wrong gold: the control's own budget
            if not rescorable:
                continue  # no per-option scores (not mc-loglik): the control asks for what it needs
            swept = {p: o.with_gold(ex.control_gold) for p, o in swept.items()}
        t.tree.prime({p: o.reward for p, o in swept.items()})
        t.scores.update(swept)
    return ex


def _best_fix(scores: dict, fix_margin: float) -> tuple[tuple, float | None] | None:
    """The correct path with the largest gold margin; with ``fix_margin > 0``, only when it exceeds that."""
    fixes = [(-math.inf if o.margin is None else o.margin, p) for p, o in scores.items() if o.reward >= 1.0]
    if not fixes:
        return None
    margin, path = max(fixes)
    if fix_margin > 0 and not margin > fix_margin:
        return None
    return path, (None if margin == -math.inf else margin)


def _evaluated(scores: dict) -> list[dict]:
    return [{"path": "".join(map(str, p)), "reward": o.reward, "margin": o.margin} for p, o in scores.items()]


def _record(evaluator, ex: _Example, meta: dict, supervision: Supervision, L: int) -> SearchRecord:
    main = ex.trees[0]
    res = main.tree.result()
    root = (1,) * L
    base = main.scores[root]
    chosen = tuple(res.decisions)
    margins = [o.margin for o in main.scores.values() if o.margin is not None]
    info: dict = {
        "base_margin": base.margin,
        "margin": main.scores[chosen].margin,
        "margin_gain": (max(margins) - base.margin) if margins and base.margin is not None else None,
        "evaluated": _evaluated(main.scores),
    }
    if base.reward >= 1.0:
        info["safe_paths"] = sum(
            1
            for p, o in main.scores.items()
            if p != root and o.reward >= 1.0 and o.margin is not None and o.margin >= supervision.safe_margin
        )
    if ex.sweep:
        info["sweep"] = {
            "skip": [ex.sweep[root[:i] + (0,) + root[i + 1 :]].margin for i in range(L)],
            "repeat": [ex.sweep[root[:i] + (2,) + root[i + 1 :]].margin for i in range(L)],
        }
    decisions, reward = list(chosen), res.reward
    for t in ex.trees[1:]:
        other = t.tree.result()
        if t.role == "control":
            c_margins = [o.margin for o in t.scores.values() if o.margin is not None]
            c_base = t.scores[root]
            info["control"] = {
                "gold": ex.control_gold,
                "base_reward": c_base.reward,
                "reward": other.reward,
                "fixed": c_base.reward < 1.0 and _best_fix(t.scores, supervision.fix_margin) is not None,
                "base_margin": c_base.margin,
                "best_margin": max(c_margins) if c_margins else None,
                "margin_gain": max(c_margins) - c_base.margin if c_margins else None,
            }
        else:
            a, b = _edits(chosen), _edits(other.decisions)
            info["seeds"] = {
                "paths": [list(chosen), list(other.decisions)],
                "agreement": len(a & b) / len(a | b) if a | b else None,
                "evaluated": _evaluated(t.scores),  # the second tree's paths, for its own soft targets
            }
            agreed = [d if d == o else 1 for d, o in zip(chosen, other.decisions, strict=True)]
            outcome = evaluator.outcomes([(ex.prepared, tuple(agreed))])[0]
            info["seeds"]["agreed_reward"] = outcome.reward
            decisions, reward = agreed, outcome.reward
    fix = _best_fix(main.scores, supervision.fix_margin) if res.base_reward < 1.0 else None
    if fix is not None:
        info["fix"] = {"path": "".join(map(str, fix[0])), "margin": fix[1]}
    if "control" in info and res.base_reward < 1.0:
        gain, c_gain = info["margin_gain"], info["control"]["margin_gain"]
        info["trusted_fix"] = fix is not None and gain is not None and c_gain is not None and gain > c_gain
    return SearchRecord(
        id=str(ex.prepared.example.id),
        task=meta["task"],
        model=meta["model"],
        prompt=ex.prepared.prompt,
        target=ex.prepared.target,
        decisions=decisions,
        layers=path_cost(tuple(decisions), main.tree.config),
        reward=float(reward),
        base_reward=float(res.base_reward),
        correct_paths=[list(p) for p in res.correct_paths],
        simulations=int(res.simulations),
        evaluations=int(res.evaluations),
        scoring=meta["scoring"],
        style=meta["style"],
        num_layers=L,
        supervision=info,
    )


def safe_paths(
    evaluated: list[dict], num_layers: int, safe_margin: float = 0.0, full_weight: float = 0.5
) -> list[tuple[list[int], float]]:
    """``(decisions, weight)`` of every evaluated path that keeps a right answer with ``safe_margin``.

    For an example the base model gets right: the all-execute path weighs ``full_weight``, every other
    safe path ``2 ** (L - layers)`` (shorter paths count more, a repeat less).
    """
    root = "1" * num_layers
    out: list[tuple[list[int], float]] = [([1] * num_layers, full_weight)]
    for entry in evaluated:
        path, margin = entry["path"], entry.get("margin")
        if path == root or len(path) != num_layers or entry.get("reward", 0.0) < 1.0:
            continue
        if margin is None or margin < safe_margin:
            continue
        decisions = [int(c) for c in path]
        out.append((decisions, 2.0 ** (num_layers - path_layers(decisions))))
    return out


def path_layers(decisions) -> float:
    """Layers a path runs, for weighting safe paths: a sublayer unit (3, 4) counts half a layer."""
    return sum(d if d < 3 else 0.5 for d in decisions)


def path_table(paths: list[tuple[list[int], float]], num_layers: int, actions: int = 3) -> torch.Tensor:
    """``[L, A]``: per layer, the weighted share of each action (skip, execute, repeat, ...) in ``paths``."""
    table = torch.zeros(num_layers, actions)
    for decisions, weight in paths:
        table[torch.arange(num_layers), torch.tensor(decisions)] += weight
    return table / table.sum(-1, keepdim=True)


__all__ = [
    "CONTROLS",
    "FIX_MARGINS",
    "Supervision",
    "format_reliability",
    "path_layers",
    "path_table",
    "reliability",
    "safe_paths",
    "search_examples",
    "single_edits",
    "wrong_gold",
]
