"""``run_eval``: accuracy against compute for the base model, routed models and static baselines.

    rows = run_eval("smollm2-135m-instruct", "arc_easy", "runs/arc/eval", routers="runs/arc/routers")

Every method is compared at the same compute: ``target_layers`` (default ``L-1, L-2, L-3, L-4, L-6, L-8``)
are mean layers executed per prompt. At each level

- static baselines (``drllm.evaluation.baselines``) run one path with exactly that many layers, chosen on
  training examples only: ``greedy`` (task-aware, TALE), ``block-influence`` (ShortGPT), ``angular``
  (Gromov et al.), ``drop-last`` and ``random`` (one row per seed);
- ``routed`` runs the routers at the budget that reaches the level on calibration prompts of the training
  split (found by bisection; the level reached on the evaluated split is reported beside it), leaving out
  the prompts the routers were trained on (their ``trained_on.json``): routers are more confident on
  those, so a budget fitted there overshoots on new prompts;
- two controls tell whether the routers learned anything per input: ``routed-random`` draws each layer's
  decision at the routers' own per-layer rates (measured on the calibration prompts), ``routed-majority``
  runs the routers' per-layer majority decision as one static path;
- ``routed-static`` (``route_from_static``) routes as deviations from a static path: the static baseline
  of that level most accurate on the calibration examples, from which a router deviates only where its
  probability gap clears a threshold (``Routers.set_default_path``; the first two layers and the last are
  protected). The threshold is the one of ``STATIC_THRESHOLDS`` most accurate on the calibration examples
  among those keeping the level within half a layer, ties going to the higher; 1.0 never deviates, so
  with no per-input signal it runs the static path. Each level's ``routed-static`` routers are also saved,
  as ``<output>/routers-at-<level>``, with a verdict: they deviate from the static path only if the routers
  beat both it and random routing here (``drllm.evaluation.export``); ``verdict.md`` lists the verdicts.

For every method and example the evaluation keeps the task score (correct or not, and the continuous
margin), agreement with the base model's answer, and greedy fidelity: how many tokens of the base model's
greedy continuation (``fidelity_tokens``) the path reproduces, computed exactly by teacher forcing that
continuation in the same packed forward (arXiv 2510.02091: pruning keeps log-likelihood scores long
after it breaks generation). Accuracies carry seeded bootstrap intervals; each method is compared, paired
on the same examples, with the base model and with the best static baseline at the same level (difference
with its interval, exact McNemar p-value).

Cost: examples are processed in chunks; the base pass of a chunk records the hidden states entering
every layer once, and every static path starts at its first non-execute layer from them. Routed rows run
one forward each, in which the routers decide from the prompt positions and the options are scored.

Outputs in ``output`` (one subfolder per task when several are given): ``results.json``, ``results.md``,
``examples.jsonl`` (per example and method), ``decisions.json`` (routed decisions), ``tradeoff.png`` and
``decisions.png``.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from drllm.router import RoutedModel, batch_prompts
from drllm.router.auto import load_with_tokenizer
from drllm.search import progress
from drllm.search.evaluator import Outcome, PathEvaluator
from drllm.search.records import claimed_output, folder_lock
from drllm.search.tasks import Scoring, Style, get_task
from drllm.search.tasks.style import describe, resolve_style

from . import baselines as static
from . import report
from .calibration import (
    BudgetCalibrator,
    choose_threshold,
    decision_rates,
    draw_path,
    fresh_examples,
    trained_on,
)
from .export import export_routers
from .learned import learned_path, learned_static_margins
from .publish import staged
from .report import EvalRow
from .results import STATIC, method_rows, write_task_files

log = logging.getLogger(__name__)

BASELINES = ("greedy", "block-influence", "angular", "drop-last", "random")
CONTROLS = ("routed-random", "routed-majority")


def run_eval(
    model: str,
    task: str,
    output: str,
    routers: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    target_layers: tuple[int, ...] | None = None,
    budgets: tuple[float, ...] = (),
    baselines: tuple[str, ...] = BASELINES,
    calibration: int = 128,
    greedy_examples: int | None = None,
    fidelity_tokens: int = 32,
    max_new_tokens: int = 32,
    data_dir: str | None = None,
    scoring: Scoring | None = None,
    style: Style = "auto",
    random_seeds: int = 3,
    batch_size: int = 16,
    tokenizer=None,
    device: str | None = None,
    strict: bool = False,
    route_from_static: bool = True,
    learned_static: str | None = None,
) -> list[EvalRow]:
    """Evaluate base, routed and static-baseline paths at matched compute and write the reports.

    Args:
        model: a model name or folder (or, from Python, a ``RoutedModel``; then pass ``tokenizer``).
        task: a task name, or several separated by commas (``arc_easy,arc_challenge,mmlu``); ``jsonl:PATH``
            works too. Several tasks are evaluated with the same routers, each into its own subfolder.
        output: folder for the results.
        routers: folder of saved routers; None keeps the routers already on a ``RoutedModel`` (or none).
            When the folder lists the examples the routers were trained on (``trained_on.json``, written
            by ``drllm train``), calibration leaves them out: routers are calibrated on prompts they never
            saw, as they will be evaluated.
        split: evaluation split (default: the task's validation split).
        limit: at most this many examples (default: the whole split).
        target_layers: mean layers per prompt to compare every method at (default: L-1, L-2, L-3, L-4, L-6,
            L-8 of the model's L layers).
        budgets: extra router budget biases to evaluate as they are, unmatched (positive skips more).
        baselines: static baselines, among greedy, block-influence, angular, drop-last, random.
        calibration: training examples the static baselines and the routers' budgets are calibrated on.
        greedy_examples: training examples the greedy baseline is searched on (default: ``calibration``;
            its cost grows with examples times layers squared).
        fidelity_tokens: tokens of the base model's greedy continuation checked for greedy fidelity
            (0 turns fidelity off).
        max_new_tokens: decoding budget of exact-answer tasks scored by generation.
        data_dir: benchmark data folder.
        scoring: the task's scoring (default: option log-likelihood for multiple choice, decoding and
            grading the final answer for exact-answer tasks).
        style: prompt style: plain, chat or auto (chosen on the training split, as search does).
        random_seeds: seeds of the random baseline (one row each).
        batch_size: rows per forward pass.
        tokenizer: the tokenizer, when ``model`` is a ``RoutedModel``.
        device: where the model runs (``load_routed``'s policy: CUDA when available).
        strict: stop at the first task row that cannot be scored fairly (an empty question, a repeated
            option, ...); by default such a row is skipped with a warning naming it.
        route_from_static: with routers, also evaluate ``routed-static``: routing as confident deviations
            from the level's best static path on the calibration examples (see the module docstring).
        learned_static: folder of ``static`` routers (``drllm train --objective kl --router static``): the
            ``learned-static`` baseline, at each level the path executing the layers of largest learned
            execute-minus-skip margin (the first two and the last always run). It competes as a static
            baseline: routers are compared with the best static path, this one included.

    Returns:
        The result rows of every task, base first.

    Raises:
        ValueError: for an unknown baseline, a level outside ``1 .. L - 1`` or a bad count.
    """
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; known baselines: {', '.join(BASELINES)}")
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
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a whole number >= 1 (or None for the whole split), got {limit!r}")
    if "random" in baselines and random_seeds == 0:
        raise ValueError("the random baseline needs random_seeds >= 1 (or leave 'random' out of baselines)")
    names = [t.strip() for t in task.split(",") if t.strip()]
    if not names:
        raise ValueError("no task given")
    folders: dict[str, str] = {}
    for name in names:
        if _slug(name) in folders:
            raise ValueError(
                f"tasks {folders[_slug(name)]!r} and {name!r} would share the output folder {_slug(name)!r}; "
                "evaluate them into separate outputs"
            )
        folders[_slug(name)] = name
    tasks = [get_task(t) for t in names]  # unknown names fail here, before the model loads
    trained = trained_on(routers)  # so does a damaged trained_on.json
    with claimed_output(output, folder=True):  # a refusal below leaves no empty folder behind
        routed, tokenizer, model_name = load_with_tokenizer(model, tokenizer, device, routers, "run_eval")
        levels = resolve_levels(target_layers, routed.num_layers)
        learned = learned_static_margins(learned_static, routed) if learned_static else None
    settings = _Settings(
        split,
        limit,
        levels,
        tuple(budgets),
        tuple(baselines),
        calibration,
        greedy_examples or calibration,
        fidelity_tokens,
        max_new_tokens,
        data_dir,
        scoring,
        style,
        random_seeds,
        batch_size,
        strict,
        route_from_static,
        trained,
        learned,
    )
    rows: list[EvalRow] = []
    with folder_lock(output, "eval.lock", "evaluation"):  # two evaluations never write one folder
        for name, task_obj in zip(names, tasks, strict=True):
            folder = Path(output) if len(names) == 1 else Path(output) / _slug(name)
            rows += _TaskEvaluation(routed, tokenizer, name, task_obj, settings, model_name).run(folder)
        if len(names) > 1:
            report.write_results(rows, Path(output), routed.num_layers, title=f"{task} on {model_name}")
    return rows


def _check_plotting() -> None:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError("drllm eval draws figures with matplotlib: pip install 'drllm[eval]'")


def resolve_levels(target_layers, num_layers: int) -> list[int]:
    """The layer levels to compare at, checked against the model (default: L-1..L-4, L-6, L-8)."""
    if target_layers is None:
        target_layers = [num_layers - k for k in (1, 2, 3, 4, 6, 8) if num_layers - k >= 1]
    levels = sorted({int(x) for x in target_layers}, reverse=True)
    bad = [x for x in levels if not 1 <= x < num_layers]
    if bad:
        raise ValueError(
            f"target layers must lie in 1..{num_layers - 1} for a {num_layers}-layer model, got {bad}"
        )
    return levels


@dataclass
class _Settings:
    split: str | None
    limit: int | None
    levels: list[int]
    budgets: tuple[float, ...]
    baselines: tuple[str, ...]
    calibration: int
    greedy_examples: int
    fidelity_tokens: int
    max_new_tokens: int
    data_dir: str | None
    scoring: str | None
    style: str
    random_seeds: int
    batch_size: int
    strict: bool = False
    route_from_static: bool = True
    trained_on: frozenset[str] = frozenset()
    """Ids the routers were fitted on (their ``trained_on.json``): calibration leaves them out."""
    learned: list[float] | None = None
    """Per layer, the learned static path's execute-minus-skip margin (``learned_static``)."""


@dataclass
class _Method:
    """One evaluated configuration: a static path, the routers at a budget, or a control."""

    name: str
    level: int | None = None
    path: tuple[int, ...] | None = None  # static methods
    budget: float | None = None  # routed
    seed: int | None = None
    rates: list[list[float]] | None = None  # routed-random: per layer, shares of skip/execute/repeat
    threshold: float | None = None  # routed-static: deviations from ``path`` need this probability gap
    calibration_layers: float | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    decisions: list[list[int]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def key(self) -> str:
        parts = [self.name] + ([f"L{self.level}"] if self.level is not None else [])
        parts += [f"b{self.budget:g}"] if self.budget is not None and self.level is None else []
        return "/".join(parts + ([f"seed{self.seed}"] if self.seed is not None else []))


class _TaskEvaluation:
    def __init__(self, routed: RoutedModel, tokenizer, name: str, task, settings: _Settings, model_name: str):
        self.routed, self.tokenizer, self.name, self.task, self.s = routed, tokenizer, name, task, settings
        self.model_name = model_name
        self.L = routed.num_layers
        self.caveat = ""  # said in every title when calibration could not be kept apart

    # ------------------------------------------------------------------ the whole evaluation
    def run(self, folder: Path) -> list[EvalRow]:
        s, task = self.s, self.task
        split = s.split or task.default_split_eval
        examples = task.load(split, data_dir=s.data_dir, limit=s.limit, strict=s.strict)
        if not examples:
            raise ValueError(f"task {self.name!r} has no examples in split {split!r}")
        scoring = s.scoring or ("generate" if task.kind == "exact" else None)
        style, measured = resolve_style(
            s.style, self.routed, self.tokenizer, task, scoring, s.data_dir, max_new_tokens=s.max_new_tokens
        )
        log.info("%s: %s", self.name, describe(style, measured, task.default_split_train))
        self.ev = PathEvaluator(
            self.routed,
            self.tokenizer,
            task,
            scoring,
            style,
            max_rows=s.batch_size,
            max_new_tokens=s.max_new_tokens,
        )
        examples = self.ev.usable(examples, s.strict)
        calib = self.ev.usable(self._calibration_examples(split, examples), s.strict)
        methods = [_Method("base", path=(1,) * self.L)]
        methods += self._static_methods(calib)
        methods += self._routed_methods(calib)
        if s.route_from_static and self.routed.routers is not None:
            methods += self._from_static_methods(calib, methods)
        self._score(methods, examples)
        rows = method_rows(self.name, methods, self.ev.scoring)
        title = f"{self.name} ({split}, n={len(examples)}) on {self.model_name}"
        if self.caveat:
            title += f"; {self.caveat}"
        with staged(folder) as stage:  # every file written aside, then published together
            write_task_files(stage, self.name, rows, methods, examples, self.L, self.ev.scoring, title)
            if any(m.name == "routed-static" for m in methods):
                verdicts = export_routers(self.routed, methods, stage, self.name, self.s.trained_on)
                report.atomic_write_text(stage / "verdict.md", "".join(f"- {v}\n" for v in verdicts))
                for v in verdicts:
                    log.info("%s", v)
        return rows

    def _calibration_examples(self, eval_split: str, evaluated: list) -> list:
        """Training examples to calibrate on: never one that is evaluated, nor one the routers saw."""
        task, s = self.task, self.s
        train = task.default_split_train
        pool = task.load(train, data_dir=s.data_dir, strict=s.strict)
        scored = {str(ex.id) for ex in evaluated}
        if train == eval_split or any(str(ex.id) in scored for ex in pool):
            left = [ex for ex in pool if str(ex.id) not in scored]
            if not left:  # said in the log and in every title of the results, never silently
                self.caveat = f"calibrated on the evaluated examples: the {train} split has no others"
                log.warning("task %r: %s; evaluate fewer (limit) to calibrate apart", self.name, self.caveat)
                return pool[: s.calibration]
            pool = left
            log.warning(
                "task %r: calibrating on the %d %s examples that are not evaluated",
                self.name,
                len(pool),
                train,
            )
        if not s.trained_on:
            return pool[: s.calibration]
        calib = fresh_examples(pool, s.trained_on, s.calibration, f"the {train} split of {self.name}")
        log.info(
            "%s: calibrating on %d %s examples the routers were not trained on (%d of %d were)",
            self.name,
            len(calib),
            train,
            sum(ex.id in s.trained_on for ex in pool),
            len(pool),
        )
        return calib

    # ------------------------------------------------------------------ methods
    def _static_methods(self, calib) -> list[_Method]:
        s, L = self.s, self.L
        wanted = [b for b in s.baselines if b != "random" or s.random_seeds > 0]
        stats = None
        if {"angular", "block-influence"} & set(wanted):
            prompts = [self.ev.prompt_text(ex) for ex in calib]
            stats = static.calibration_statistics(
                self.routed, self.tokenizer, prompts, batch_size=s.batch_size
            )
        greedy = None
        if "greedy" in wanted:
            prepared = self.ev.prepare(calib[: s.greedy_examples])
            log.info("%s: greedy static paths on %d training examples", self.name, len(prepared))
            greedy = static.greedy_paths(self.ev, prepared, s.levels, progress=log.info)
            for p in prepared:
                self.ev.release(p)
        methods = []
        for level in s.levels:
            n = L - level
            for name in wanted:
                if name == "greedy":
                    methods.append(_Method(name, level, path=tuple(greedy.paths[level])))
                elif name == "block-influence":
                    methods.append(_Method(name, level, path=tuple(static.block_influence_path(stats, n))))
                elif name == "angular":
                    methods.append(_Method(name, level, path=tuple(static.angular_path(stats, n))))
                elif name == "drop-last":
                    methods.append(_Method(name, level, path=tuple(static.drop_last(L, n))))
                else:
                    for seed in range(s.random_seeds):
                        path = tuple(static.random_skips(L, n, seed))
                        methods.append(_Method(name, level, path=path, seed=seed))
            if s.learned is not None:
                methods.append(_Method("learned-static", level, path=learned_path(s.learned, level)))
        return methods

    def _routed_methods(self, calib) -> list[_Method]:
        if self.routed.routers is None:
            return []
        s = self.s
        prompts = [self.ev.prompt_text(ex) for ex in calib]
        batches = [
            batch_prompts(self.tokenizer, prompts[i : i + s.batch_size], self.routed.device)
            for i in range(0, len(prompts), s.batch_size)
        ]
        calibrator = BudgetCalibrator(self.routed, batches)
        methods = []
        for level in s.levels:
            budget, reached, decisions = calibrator.budget_for(level)
            methods.append(_Method("routed", level, budget=budget, calibration_layers=reached))
            rates = decision_rates(decisions)
            majority = tuple(max(range(3), key=col.__getitem__) for col in rates)
            methods.append(_Method("routed-random", level, rates=rates, seed=0, calibration_layers=reached))
            methods.append(_Method("routed-majority", level, path=majority, calibration_layers=reached))
        for budget in s.budgets:
            methods.append(_Method("routed", None, budget=float(budget)))
        log.info(
            f"{self.name}: router budgets for levels "
            + ", ".join(f"{m.level}: {m.budget:+.3f}" for m in methods if m.name == "routed" and m.level),
        )
        return methods

    def _from_static_methods(self, calib, methods: list[_Method]) -> list[_Method]:
        """Per level, ``routed-static``: the best static path on the calibration examples and a threshold."""
        statics = [m for m in methods if m.name in STATIC and m.level is not None]
        if not statics:
            return []
        prepared = self.ev.prepare(calib)
        routers = self.routed.routers
        saved = (list(routers.config.default_path), routers.config.threshold, list(routers.config.protected))
        found = []
        try:
            for level in self.s.levels:
                here = [m for m in statics if m.level == level]
                scores = [self._calib_accuracy(prepared, m.path) for m in here]
                chosen = here[max(range(len(here)), key=lambda k: (scores[k], -k))]
                threshold, layers = choose_threshold(self.ev, prepared, chosen.path, level)
                found.append(
                    _Method(
                        "routed-static",
                        level,
                        path=chosen.path,
                        threshold=threshold,
                        calibration_layers=layers,
                    )
                )
                log.info(
                    "%s: routed-static at %d layers deviates from %s (calibration accuracy %.1f%%) where a "
                    "router's probability gap exceeds %.2f",
                    self.name,
                    level,
                    chosen.name,
                    100 * max(scores) / len(prepared),
                    threshold,
                )
        finally:
            routers.set_default_path(saved[0] or None, saved[1], saved[2])
            for p in prepared:
                self.ev.release(p)
        return found

    def _calib_accuracy(self, prepared, path) -> int:
        return sum(o.reward >= 1.0 for o in self.ev.outcomes([(p, tuple(path)) for p in prepared]))

    # ------------------------------------------------------------------ scoring
    def _score(self, methods: list[_Method], examples) -> None:
        s, ev = self.s, self.ev
        continuations = None
        if s.fidelity_tokens:
            log.info("%s: base greedy continuations (%d tokens)", self.name, s.fidelity_tokens)
            continuations = ev.greedy_continuations(examples, s.fidelity_tokens)
        chunk = max(s.batch_size * 4, 1)
        bar = progress.bar(len(examples), f"eval {self.name}", "ex")
        for start in range(0, len(examples), chunk):
            part = examples[start : start + chunk]
            conts = continuations[start : start + chunk] if continuations is not None else None
            prepared = ev.prepare(part, start, conts)
            for method in methods:
                self._score_method(method, prepared, start)
            for p in prepared:
                ev.release(p)
            bar.update(len(part))
        bar.close()

    def _score_method(self, method: _Method, prepared, start: int) -> None:
        ev, routed = self.ev, self.routed
        _sync()
        began = time.perf_counter()
        if method.name == "routed":
            old = routed.budget
            routed.budget = method.budget
            try:
                outcomes, decisions = ev.routed_outcomes(prepared)
            finally:
                routed.budget = old
        elif method.threshold is not None:
            config = routed.routers.config
            saved = (list(config.default_path), config.threshold, list(config.protected))
            routed.routers.set_default_path(method.path, method.threshold, protected=(0, 1, self.L - 1))
            try:
                outcomes, decisions = ev.routed_outcomes(prepared)
            finally:
                routed.routers.set_default_path(saved[0] or None, saved[1], saved[2])
        else:
            if method.rates is not None:
                decisions = [draw_path(method.rates, method.seed, start + k) for k in range(len(prepared))]
            else:
                decisions = [list(method.path)] * len(prepared)
            outcomes = ev.outcomes([(p, tuple(d)) for p, d in zip(prepared, decisions, strict=True)])
        _sync()
        method.seconds += time.perf_counter() - began
        method.outcomes += outcomes
        method.decisions += [list(d) for d in decisions]
        method.layers += [sum(d) for d in decisions]
        method.tokens += [len(p.tokens) - (len(p.continuation[1]) if p.continuation else 0) for p in prepared]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "task"


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
