"""One task's evaluation (``run_eval`` runs one per task).

The methods (static baselines, the routers at calibrated budgets, their controls, ``routed-static``) are
built on calibration examples, scored on the same evaluated examples, then written together.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from drllm.router import REPEAT, RoutedModel, StandIns, batch_prompts, path_macs
from drllm.search import progress
from drllm.search.evaluator import Outcome, PathEvaluator
from drllm.search.tasks.style import describe, resolve_style

from . import baselines as static
from . import report
from .calibration import (
    BudgetCalibrator,
    calibration_examples,
    choose_threshold,
    decision_rates,
    draw_path,
)
from .compared import attached
from .export import export_routers
from .learned import learned_path
from .publish import staged
from .report import EvalRow
from .results import STATIC, UNIT_BASELINES, method_rows, write_task_files
from .static_paths import paths_of_units, with_stand_ins

log = logging.getLogger("drllm.evaluation.evaluate")


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
    stand_in: str | None = None
    stand_in_rank: int | None = None
    compared: dict = field(default_factory=dict)
    """``{label: (routers, stand-ins)}`` of ``compare_routers``: rows ``routed:<label>``."""


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
    stand_ins: StandIns | None = None  # static paths with linear stand-ins (``<name>+linear``)
    outcomes: list[Outcome] = field(default_factory=list)
    layers: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    decisions: list[list[int]] = field(default_factory=list)
    macs: list[float] = field(default_factory=list)  # per example, the share of the full model's
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
        self.routers_stand_ins = routed.stand_ins  # saved with the routers: theirs, never a static path's

    # ------------------------------------------------------------------ the whole evaluation
    def run(self, folder: Path) -> list[EvalRow]:
        s, task = self.s, self.task
        split = s.split or task.default_split_eval
        examples = task.load(split, data_dir=s.data_dir, limit=s.limit, strict=s.strict)
        if not examples:
            raise ValueError(f"task {self.name!r} has no examples in split {split!r}")
        scoring = s.scoring or ("generate" if task.kind == "exact" else None)
        budget = s.max_new_tokens
        if not task.has_gold:  # prompts only: closeness to the base model over its own continuation
            scoring, budget = self._gold_free(s)
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
            max_new_tokens=budget,
        )
        examples = self.ev.usable(examples, s.strict)
        calib = self.ev.usable(self._calibration_examples(split, examples), s.strict)
        methods = [_Method("base", path=(1,) * self.L)]
        with self._stand_ins(None):
            methods += self._static_methods(calib)
            methods += [
                _Method(name, level, path=path, stand_ins=maps)
                for name, level, path, maps in with_stand_ins(
                    self.routed, self.tokenizer, self.ev, calib, methods, s, self.name
                )
            ]
        methods += self._routed_methods(calib)
        for label, (routers, stand_ins) in s.compared.items():
            with attached(self.routed, routers, stand_ins):
                methods += self._budget_methods(calib, f"routed:{label}")
        if s.route_from_static and self.routed.routers is not None:
            methods += self._from_static_methods(calib, methods)
        self._score(methods, examples)
        self.methods = methods  # kept for pooling several tasks (``drllm.evaluation.pooled``)
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

    def _gold_free(self, s) -> tuple[str, int]:
        """Scoring and continuation length of a prompts-only task (``check_prompts_only``), in every title."""
        self.caveat = (
            f"prompts only: a path counts as right when it reproduces the base model's whole "
            f"{s.fidelity_tokens}-token continuation (teacher-forced); KL and agreement measure the rest"
        )
        return "teacher-forced", s.fidelity_tokens

    def _calibration_examples(self, eval_split: str, evaluated: list) -> list:
        """Training examples to calibrate on (``calibration_examples``); its caveats join the titles."""
        pool, caveats = calibration_examples(self.task, self.s, self.name, eval_split, evaluated)
        self.caveat = "; ".join([self.caveat, *caveats] if self.caveat else caveats)
        return pool

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
        units = [b for b in wanted if b in UNIT_BASELINES]
        unit_paths = paths_of_units(self.routed, self.tokenizer, self.ev, calib, units, s) if units else {}
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
                elif name in UNIT_BASELINES:
                    methods.append(_Method(name, level, path=unit_paths[name, level]))
                else:
                    for seed in range(s.random_seeds):
                        path = tuple(static.random_skips(L, n, seed))
                        methods.append(_Method(name, level, path=path, seed=seed))
            if s.learned is not None:
                methods.append(_Method("learned-static", level, path=learned_path(s.learned, level)))
        return methods

    def _budget_methods(self, calib, name: str, controls: bool = False) -> list[_Method]:
        """The attached routers at every level's calibrated budget (with ``controls``, their controls)."""
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
            methods.append(_Method(name, level, budget=budget, calibration_layers=reached))
            if not controls:
                continue
            rates = decision_rates(decisions)
            majority = tuple(max(range(len(col)), key=col.__getitem__) for col in rates)
            methods.append(_Method("routed-random", level, rates=rates, seed=0, calibration_layers=reached))
            methods.append(_Method("routed-majority", level, path=majority, calibration_layers=reached))
        return methods

    def _routed_methods(self, calib) -> list[_Method]:
        if self.routed.routers is None:
            return []
        s = self.s
        methods = self._budget_methods(calib, "routed", controls=True)
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

    @contextlib.contextmanager
    def _stand_ins(self, stand_ins):
        """Run the forwards inside with ``stand_ins`` attached (None: plain skips and repeats)."""
        before = self.routed.stand_ins
        self.routed.set_stand_ins(stand_ins)
        try:
            yield
        finally:
            self.routed.set_stand_ins(before)

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
        if method.name.startswith("routed:"):  # another folder's routers, with their own stand-ins
            with attached(self.routed, *self.s.compared[method.name.split(":", 1)[1]]):
                return self._score_with(method, prepared, start)
        static = not method.name.startswith("routed")  # base, static paths, +linear; never the routers'
        with self._stand_ins(method.stand_ins if static else self.routers_stand_ins):
            self._score_with(method, prepared, start)

    def _score_with(self, method: _Method, prepared, start: int) -> None:
        ev, routed = self.ev, self.routed
        _sync()
        began = time.perf_counter()
        if method.name == "routed" or method.name.startswith("routed:"):
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
        tokens = [len(p.tokens) - (len(p.continuation[1]) if p.continuation else 0) for p in prepared]
        method.tokens += tokens
        config, stand_ins = routed.config, routed.stand_ins
        shares = [
            path_macs(config, d, n, stand_ins)["fraction"] for d, n in zip(decisions, tokens, strict=True)
        ]
        method.macs += shares
        # a path of units runs parts of layers: its layers are the blocks its multiply-adds would buy
        method.layers += [
            sum(d) if max(d) <= REPEAT else round(share * self.L, 2)
            for d, share in zip(decisions, shares, strict=True)
        ]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
