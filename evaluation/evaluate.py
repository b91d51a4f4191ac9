"""``run_eval``: accuracy and compute of the base model, the routed model and static baselines on a task.

    rows = run_eval("smollm2-135m-instruct", "arc_easy", "runs/arc/eval", routers="runs/arc/routers")

Methods (one result row each, see ``drllm.evaluation.report`` for the row keys):

- ``base``: every layer executes once.
- ``routed``: the routers decide once per prompt (from the prompt alone) at each budget bias.
- ``drop-last`` / ``angular`` / ``random``: static skips of ``n`` layers, ``n`` matched to the routers'
  mean layers at budget 0 (``layers_to_drop``). ``angular`` calibrates on prompts of the training split;
  ``random`` is averaged over seeds (``accuracy_std``).

Multiple-choice tasks are scored by option log-likelihood through ``PathEvaluator`` (all options packed
in one row); its prefix reuse is off so each method's ``seconds`` is its own full cost. Exact-answer
tasks decode greedily and grade the text. ``layer_applications`` counts layers times the tokens they
ran on: prompt plus all options (choice), or prompt plus generated tokens up to and including EOS.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from drllm.router import RoutedModel, batch_prompts, load_routed, load_tokenizer
from drllm.search.evaluator import PathEvaluator, greedy_new_tokens
from drllm.search.tasks import get_task
from drllm.search.tasks.style import describe, resolve_style

from . import plots, report
from .baselines import angular_block, drop_last, layers_to_drop, random_skips

BASELINES = ("drop-last", "angular", "random")


def run_eval(
    model: str,
    task: str,
    output: str,
    routers: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    budgets: tuple[float, ...] = (-0.5, 0.0, 0.25, 0.5, 0.75, 1.0),
    baselines: tuple[str, ...] = BASELINES,
    max_new_tokens: int = 32,
    data_dir: str | None = None,
    scoring: str | None = None,
    style: str = "auto",
    random_seeds: int = 3,
    calibration: int = 16,
    batch_size: int = 16,
    tokenizer=None,
    progress: bool = True,
    device: str | None = None,
) -> list[dict]:
    """Evaluate base, routed and static-baseline decisions on a task and write the reports into ``output``.

    Args:
        model: a model name or folder, or a ``RoutedModel`` (then pass ``tokenizer``).
        task: task name (``arc_easy``, ``gsm8k``, ``jsonl:PATH``, ...).
        output: folder for ``results.json``, ``results.md``, ``tradeoff.png``, ``decisions.png`` and
            ``decisions.json`` (the base and routed decision vectors).
        routers: folder of saved routers to load; None keeps the routers already on a ``RoutedModel``.
        split: evaluation split; the task's default evaluation split when None.
        limit: at most this many examples (the first ones of the split).
        budgets: router budget biases to sweep (positive skips more).
        baselines: static baselines to run, among ``BASELINES``.
        max_new_tokens: decoding budget of exact-answer tasks.
        data_dir: benchmark data folder.
        scoring: multiple-choice scoring (``mc-loglik`` or ``mc-letter``); the task's default when None.
        style: prompt style: ``plain``, ``chat`` or ``auto`` (chosen on the training split, as search does).
        random_seeds: seeds averaged by the ``random`` baseline.
        calibration: training-split prompts the ``angular`` baseline calibrates on.
        batch_size: prompts per forward pass.
        tokenizer: the tokenizer, when ``model`` is a ``RoutedModel``.
        progress: show progress bars and notes.
        device: where the model runs (``load_routed``'s policy: CUDA when available).

    Returns:
        The result rows, in report order.

    Raises:
        ValueError: for an unknown baseline name or a ``RoutedModel`` without its tokenizer.
    """
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; known baselines: {', '.join(BASELINES)}")
    task_obj = get_task(task)
    routed, tokenizer, name = _load(model, routers, tokenizer, device)
    examples = task_obj.load(split or task_obj.default_split_eval, data_dir=data_dir, limit=limit)
    if not examples:
        raise ValueError(f"task {task!r} has no examples in split {split or task_obj.default_split_eval!r}")
    style, measured = resolve_style(
        style, routed, tokenizer, task_obj, scoring, data_dir, max_new_tokens=max_new_tokens
    )
    _note(progress, describe(style, measured, task_obj.default_split_train))
    scorer = _Scorer(routed, tokenizer, task_obj, scoring, style, batch_size, max_new_tokens, progress)
    L = routed.num_layers
    results = [scorer.run("base", examples, lambda ids, mask: torch.ones(ids.shape[0], L, dtype=torch.long))]
    if routed.routers is not None:
        results += [scorer.run_routed(examples, b) for b in budgets]
    reference = _reference_row(results)
    drops = _baseline_drops(results, L, baselines, progress)
    if drops:
        calib = _calibration_prompts(task_obj, scorer, calibration, data_dir, progress)
        for n, budget in drops:
            for row, d in _baseline_rows(scorer, examples, baselines, n, calib, random_seeds):
                results.append(({**row, "matched_budget": budget}, d))
    rows = report.sort_rows([r for r, _ in results])
    _write(results, reference, output, L, f"{task} on {name}")
    return rows


def _load(model, routers, tokenizer, device):
    """The ``RoutedModel`` (routers loaded when given), its tokenizer and a display name."""
    if isinstance(model, RoutedModel):
        if tokenizer is None:
            raise ValueError("run_eval got a RoutedModel without its tokenizer; pass tokenizer=")
        name = str(getattr(model.model.config, "name_or_path", "") or "model")
        return load_routed(model, device=device, routers=routers), tokenizer, name
    routed = load_routed(model, device=device, routers=routers)
    return routed, tokenizer if tokenizer is not None else load_tokenizer(str(model)), str(model)


def _reference_row(results) -> tuple[dict, list] | None:
    """The routed result at the budget closest to 0 (None without routers)."""
    routed = [(row, d) for row, d in results if row["method"] == "routed"]
    return min(routed, key=lambda rd: abs(rd[0]["budget"])) if routed else None


def _baseline_drops(results, num_layers: int, baselines, progress: bool) -> list[tuple[int, float]]:
    """``(n, budget)`` pairs: static baselines skip n layers, matched to the routed row at that budget.

    One pair per distinct number of layers the routers save over the budget sweep (rounded), so the
    baselines trace the same compute range as the routers. None without routers or when nothing is saved.
    """
    if not baselines:
        return []
    routed = [row for row, _ in results if row["method"] == "routed"]
    if not routed:
        _note(progress, "no routers: static baselines skipped (their compute is matched to the routers')")
        return []
    drops: dict[int, float] = {}
    for row in sorted(routed, key=lambda r: abs(r["budget"])):
        n = min(layers_to_drop(row["layers_per_prompt"], num_layers), num_layers - 1)
        if n > 0:
            drops.setdefault(n, row["budget"])
    if not drops:
        _note(
            progress,
            f"routers run {min(r['layers_per_prompt'] for r in routed):.2f} or more of "
            f"{num_layers} layers at every budget: nothing to drop, static baselines skipped",
        )
    return sorted(drops.items())


def _calibration_prompts(task, scorer, count: int, data_dir, progress: bool) -> list[str]:
    split = task.default_split_train
    if split == task.default_split_eval:
        _note(progress, f"task {task.name!r} has a single split: angular calibration prompts come from it")
    examples = task.load(split, data_dir=data_dir, limit=max(1, count))
    return [scorer.prompt(ex) for ex in examples]


def _baseline_rows(scorer, examples, baselines, n: int, calib: list[str], seeds: int) -> list:
    """Rows (with their decisions) of the static baselines skipping ``n`` layers."""
    L = scorer.routed.num_layers
    out = []
    for method in baselines:
        if method == "drop-last":
            path = drop_last(L, n)
        elif method == "angular":
            ids, mask = batch_prompts(scorer.tokenizer, calib, scorer.routed.device)
            path = angular_block(scorer.routed, ids, mask, n)
        else:
            out.append(_random_row(scorer, examples, n, seeds))
            continue
        row, decisions = scorer.run(method, examples, _static(path))
        out.append(({**row, "skipped": [i for i, d in enumerate(path) if d == 0]}, decisions))
    return out


def _random_row(scorer, examples, n: int, seeds: int):
    """The ``random`` baseline: mean over seeds, with the accuracy's standard deviation."""
    L = scorer.routed.num_layers
    seeds = range(max(1, seeds))
    runs = [scorer.run("random", examples, _static(random_skips(L, n, seed))) for seed in seeds]
    accs = [row["accuracy"] for row, _ in runs]
    row = dict(runs[0][0])
    row["accuracy"] = statistics.fmean(accs)
    row["accuracy_std"] = statistics.stdev(accs) if len(accs) > 1 else 0.0
    row["layer_applications"] = statistics.fmean(r["layer_applications"] for r, _ in runs)
    row["seconds"] = sum(r["seconds"] for r, _ in runs)
    row["seeds"] = len(runs)
    return row, runs[0][1]


def _static(path: list[int]):
    return lambda ids, mask: torch.tensor(path, dtype=torch.long).expand(ids.shape[0], -1)


def _write(results, reference, output: str, num_layers: int, title: str) -> None:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r, _ in results]
    report.write_results(rows, out, num_layers, title=title)
    plots.plot_tradeoff(rows, out / "tradeoff.png", num_layers, title=title)
    shown = reference or results[0]
    label = f"routed, budget {shown[0]['budget']:g}" if reference else "base"
    plots.plot_decisions(shown[1], out / "decisions.png", title=f"{title}: {label} decisions")
    saved = [
        {"method": r["method"], "budget": r["budget"], "decisions": d}
        for r, d in results
        if r["method"] in ("base", "routed")
    ]
    report.atomic_write_text(out / "decisions.json", json.dumps(saved) + "\n")


def _note(progress: bool, text: str) -> None:
    if progress:
        print(f"note: {text}")


class _Scorer:
    """Runs one method's decisions over a task's examples: accuracy, layers, layer applications, time."""

    def __init__(self, routed, tokenizer, task, scoring, style, batch_size, max_new_tokens, progress):
        self.routed, self.tokenizer, self.task = routed, tokenizer, task
        self.style, self.batch_size, self.progress = style, batch_size, progress
        self.max_new_tokens = max_new_tokens
        self.choice = task.kind == "choice"
        self.scoring = task._check_scoring(scoring)
        if self.choice:
            self.evaluator = PathEvaluator(
                routed, tokenizer, task, self.scoring, style, max_rows=batch_size, reuse_prefix=False
            )
        self.eos = _eos_ids(tokenizer, routed.model)

    def prompt(self, example) -> str:
        """The prompt text of an example, as every method sees it."""
        scoring = self.scoring if self.choice else None
        return self.task.prompt(example, self.tokenizer, style=self.style, scoring=scoring)

    def run_routed(self, examples, budget: float):
        """The routed row at ``budget``: decisions from the routers on each prompt."""
        old = self.routed.budget
        self.routed.budget = budget
        try:
            row, decisions = self.run("routed", examples, None, label=f"routed b={budget:g}")
        finally:
            self.routed.budget = old
        return {**row, "budget": float(budget)}, decisions

    def run(self, method: str, examples, decide, label: str | None = None):
        """One row for ``decide(ids, mask) -> [B, L]`` (None: the routers decide), and its decisions."""
        from tqdm.auto import tqdm

        bar = tqdm(
            total=len(examples),
            desc=label or method,
            unit="ex",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        correct, layers, apps, decisions = [], [], [], []
        _sync()
        start = time.perf_counter()
        for i in range(0, len(examples), self.batch_size):
            chunk = examples[i : i + self.batch_size]
            ids, mask = batch_prompts(self.tokenizer, [self.prompt(ex) for ex in chunk], self.routed.device)
            d = decide(ids, mask) if decide is not None else None
            step = self._choice(chunk, ids, mask, d) if self.choice else self._exact(chunk, ids, mask, d)
            for got, tokens, path in zip(*step, strict=True):
                correct.append(got)
                layers.append(sum(path))
                apps.append(sum(path) * tokens)
                decisions.append(path)
            bar.update(len(chunk))
        _sync()
        seconds = time.perf_counter() - start
        bar.close()
        row = {
            "method": method,
            "budget": None,
            "accuracy": statistics.fmean(correct),
            "layers_per_prompt": statistics.fmean(layers),
            "layer_applications": statistics.fmean(apps),
            "seconds": seconds,
            "n": len(examples),
        }
        return row, decisions

    def _choice(self, chunk, ids, mask, d):
        if d is None:
            d = self.routed.route(ids, mask)
        paths = [tuple(int(x) for x in row) for row in d.tolist()]
        prepared = self.evaluator.prepare(chunk)
        rewards = self.evaluator.rewards(list(zip(prepared, paths, strict=True)))
        return [r >= 1.0 for r in rewards], [len(p.tokens) for p in prepared], [list(p) for p in paths]

    def _exact(self, chunk, ids, mask, d):
        pad = self.tokenizer.pad_token_id
        new = greedy_new_tokens(self.routed, ids, mask, d, self.max_new_tokens, pad).tolist()
        paths = self.routed.last_decisions.tolist()
        correct, tokens = [], []
        for ex, row, n_prompt in zip(chunk, new, mask.sum(1).tolist(), strict=True):
            kept = _until_eos(row, self.eos)
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            correct.append(bool(self.task.grade(ex, text)))
            tokens.append(int(n_prompt) + len(kept))
        return correct, tokens, paths


def _eos_ids(tokenizer, model) -> set[int]:
    ids = set()
    config = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids


def _until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """Generated tokens up to and including the first EOS (all of them when there is none)."""
    for k, t in enumerate(tokens):
        if t in eos:
            return tokens[: k + 1]
    return tokens


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
