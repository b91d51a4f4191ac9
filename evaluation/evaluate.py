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
from pathlib import Path

from drllm.router.auto import load_with_tokenizer
from drllm.search.records import claimed_output, folder_lock
from drllm.search.tasks import Scoring, Style, get_task

from . import report
from .arguments import (  # noqa: F401 - importable from here
    BASELINES,
    baseline_names,
    check_eval_arguments,
    check_levels,
    check_prompts_only,
    level_values,
    refuse_task_in_output,
    slug,
    task_names,
)
from .calibration import (  # noqa: F401 - importable from here
    BudgetCalibrator,
    decision_rates,
    trained_on,
)
from .compared import compared_labels, load_compared
from .learned import learned_static_margins
from .pooled import pooled_rows
from .publish import refuse_router_folder, staged
from .report import EvalRow
from .task_eval import (  # noqa: F401 - moved; importable from here as before
    _Method,
    _Settings,
    _TaskEvaluation,
)

log = logging.getLogger(__name__)

CONTROLS = ("routed-random", "routed-majority")


def run_eval(
    model: str,
    task: str,
    output: str,
    routers: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    target_layers: tuple[int, ...] | int | None = None,
    target_compute: tuple[float, ...] | float | None = None,
    budgets: tuple[float, ...] = (),
    baselines: tuple[str, ...] | str = BASELINES,
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
    dtype: str | None = None,
    strict: bool = False,
    route_from_static: bool = True,
    learned_static: str | None = None,
    stand_in: str | None = None,
    stand_in_rank: int | None = None,
    compare_routers: tuple[str, ...] = (),
) -> list[EvalRow]:
    """Evaluate base, routed and static-baseline paths at matched compute and write the reports.

    Args:
        model: a model name or folder (or, from Python, a ``RoutedModel``; then pass ``tokenizer``).
        task: a task name, or several separated by commas (``arc_easy,arc_challenge,mmlu``); ``jsonl:PATH``
            works too (a file whose name holds commas stays whole). Several tasks are evaluated with the same
            routers, each into its own subfolder; ``output/results.md`` holds every task's rows and the
            ``pooled`` ones (all examples together; beside tasks with gold answers, prompts-only tasks are
            left out of them, see ``drllm.evaluation.pooled``). Each task is named once.
        output: folder for the results; it must not hold a ``jsonl:`` task file (it would be replaced).
        routers: folder of saved routers; None keeps the routers already on a ``RoutedModel`` (or none).
            When the folder lists the examples the routers were trained on (``trained_on.json``, written
            by ``drllm train``), calibration leaves them out: routers are calibrated on prompts they never
            saw, as they will be evaluated.
        split: evaluation split (default: the task's validation split).
        limit: at most this many examples (default: the whole split).
        target_layers: mean layers per prompt to compare every method at, each in ``1 .. L - 1`` (default:
            L-1, L-2, L-3, L-4, L-6, L-8 of the model's L layers).
        target_compute: instead of ``target_layers``, shares of the full model's multiply-adds per prompt
            token (0.9, 0.8): each becomes the level ``n`` of ``n / L`` closest to it (blocks cost alike
            but for sliding windows). Every row reports its exact share (``compute``); the unit baselines
            match the block compute of their level.
        budgets: extra router budget biases to evaluate as they are, unmatched (positive skips more).
        baselines: static baselines, each named once, among greedy, block-influence, angular, drop-last,
            random, and the sublayer ones attention-drop (only attentions dropped), mlp-drop (only MLPs)
            and unit-drop (attentions and MLPs), which drop units by least influence per multiply-add until
            they save at least what the level's block paths save. They are compared with the block paths of
            their level (KL and accuracy, paired), not counted among them: routers and ``routed-static`` use
            block paths.
        calibration: training examples the static baselines and the routers' budgets are calibrated on.
        greedy_examples: training examples the greedy baseline is searched on (default: ``calibration``;
            its cost grows with examples times layers squared).
        fidelity_tokens: tokens of the base model's greedy continuation checked for greedy fidelity
            (0 turns fidelity off).
        max_new_tokens: decoding budget of exact-answer tasks scored by generation (>= 1).
        data_dir: benchmark data folder.
        scoring: the task's scoring (default: option log-likelihood for multiple choice, decoding and
            grading the final answer for exact-answer tasks).
        style: prompt style: plain, chat or auto (chosen on the training split, as search does).
        random_seeds: seeds of the random baseline (one row each).
        batch_size: rows per forward pass.
        tokenizer: the tokenizer, when ``model`` is a ``RoutedModel``.
        device: where the model runs (``load_routed``'s policy: CUDA when available).
        dtype: the model's dtype: auto or None keeps the checkpoint's; float32, bfloat16 or float16.
        strict: stop at the first task row that cannot be scored fairly (an empty question, a repeated
            option, ...); by default such a row is skipped with a warning naming it.
        route_from_static: with routers, also evaluate ``routed-static``: routing as confident deviations
            from the level's best static path on the calibration examples (see the module docstring).
        learned_static: folder of ``static`` routers (``drllm train --objective kl --router static``): the
            ``learned-static`` baseline, at each level the path executing the layers of largest learned
            execute-minus-skip margin (the first two and the last always run). It competes as a static
            baseline: routers are compared with the best static path, this one included.
        stand_in: ``linear``: also every static path (but ``random``) with linear stand-ins for its skipped
            layers and, for the unit baselines, its switched-off units, fitted in closed form on the
            calibration examples (``drllm.search.stand_ins``, ``drllm.search.unit_stand_ins``), as
            ``<name>+linear``; they are compared with the static paths of their level, not counted among
            them. Routers always run the stand-ins saved with them, the static paths never do.
        stand_in_rank: rank of those maps (None: full rank).
        compare_routers: more router folders, each evaluated as ``routed:<folder name>`` at every level's
            calibrated budget with its own stand-ins, on the same examples as every other method, so that
            routers and their ``static`` control are judged on identical questions, paired. The controls,
            ``routed-static`` and the exported artefact stay with ``routers``. Calibration leaves out the
            examples any of the folders was trained on.

    Returns:
        The result rows of every task, base first (with several tasks, the ``pooled`` rows follow).

    Raises:
        ValueError: for an unknown or repeated baseline, a level outside ``1 .. L - 1``, a bad count, a task
            named twice or an output folder holding a task file.
    """
    baselines = baseline_names(baselines)
    check_eval_arguments(
        baselines,
        calibration,
        batch_size,
        greedy_examples,
        fidelity_tokens,
        random_seeds,
        limit,
        max_new_tokens,
    )
    target_layers = level_values(target_layers, "target_layers")
    target_compute = level_values(target_compute, "target_compute")
    check_levels(target_layers, target_compute)
    stand_in = None if stand_in in (None, "none") else stand_in
    if stand_in not in (None, "linear"):
        raise ValueError(f"stand_in must be 'linear' or none, got {stand_in!r}")
    if stand_in and not learned_static and not set(baselines) - {"random"}:
        raise ValueError("--stand-in linear pairs static paths with their stand-ins, and random ones are not "
                         "paired: add a baseline such as block-influence or angular")  # fmt: skip
    if stand_in is None and stand_in_rank is not None:
        raise ValueError(
            "--stand-in-rank sets the rank of --stand-in linear: add --stand-in linear, or drop it"
        )
    if stand_in_rank is not None and (
        isinstance(stand_in_rank, bool) or not isinstance(stand_in_rank, int) or stand_in_rank < 1
    ):
        raise ValueError(
            f"stand_in_rank must be a whole number >= 1 (or None: full rank), got {stand_in_rank!r}"
        )
    names = task_names(task)  # one task named twice, or two names sharing a folder, are refused
    refuse_task_in_output(output, names)
    tasks = [get_task(t) for t in names]  # unknown names fail here, before the model loads
    for name, task_obj in zip(names, tasks, strict=True):
        check_prompts_only(name, task_obj, scoring, fidelity_tokens)
    others = compared_labels(compare_routers, routers)
    trained = trained_on(routers).union(*(trained_on(f) for f in others.values()))  # damaged files fail here
    refuse_router_folder(output)
    with claimed_output(output, folder=True):  # a refusal below leaves no empty folder behind
        routed, tokenizer, model_name = load_with_tokenizer(
            model, tokenizer, device, routers, "run_eval", dtype
        )
        levels = resolve_levels(target_layers, routed.num_layers, target_compute)
        if budgets and routed.routers is None:
            raise ValueError("--budgets are router budgets, but no --routers are given: drop --budgets")
        learned = learned_static_margins(learned_static, routed) if learned_static else None
        compared = load_compared(routed, others)
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
        stand_in,
        stand_in_rank,
        compared,
    )
    rows: list[EvalRow] = []
    per_task = []
    with folder_lock(output, "eval.lock", "evaluation"):  # two evaluations never write one folder
        if len(names) == 1:
            evaluation = _TaskEvaluation(routed, tokenizer, names[0], tasks[0], settings, model_name)
            return evaluation.run(Path(output))
        with staged(Path(output)) as stage:  # every task's folder and the pooled report, published together
            for name, task_obj in zip(names, tasks, strict=True):
                evaluation = _TaskEvaluation(routed, tokenizer, name, task_obj, settings, model_name)
                rows += evaluation.run(stage / slug(name))
                per_task.append((evaluation.methods, evaluation.ev.scoring))
            pooled, note = pooled_rows(names, tasks, per_task)
            rows += pooled
            title = f"{task} on {model_name}; {note}"
            report.write_results(rows, stage, routed.num_layers, title=title)
    return rows


def resolve_levels(target_layers, num_layers: int, target_compute=None) -> list[int]:
    """The layer levels to compare at, checked against the model (default: L-1..L-4, L-6, L-8).

    ``target_compute`` (shares of the full model) gives each share's nearest level instead; it cannot be
    combined with ``target_layers``, and two shares that land on one level are refused.
    """
    if target_compute is not None:
        if target_layers is not None:
            raise ValueError("give target layers or target compute, not both")
        return _compute_levels(target_compute, num_layers)
    if target_layers is None:
        target_layers = [num_layers - k for k in (1, 2, 3, 4, 6, 8) if num_layers - k >= 1]
    levels = sorted({int(x) for x in target_layers}, reverse=True)
    bad = [x for x in levels if not 1 <= x < num_layers]
    if bad:
        raise ValueError(
            f"target layers must lie in 1..{num_layers - 1} for a {num_layers}-layer model, got {bad}"
        )
    return levels


def _compute_levels(target_compute, num_layers: int) -> list[int]:
    shares = list(target_compute)
    if not shares:
        raise ValueError("target compute is empty: give shares of the full model such as 0.9,0.8")
    levels: dict[int, float] = {}
    for share in shares:
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share < 1:
            raise ValueError(f"target compute must be shares of the full model in (0, 1), got {share!r}")
        level = min(range(1, num_layers), key=lambda n: (abs(n / num_layers - share), -n))
        if level in levels:
            raise ValueError(
                f"target compute {levels[level]:g} and {share:g} both mean {level} of {num_layers} layers; "
                "give shares at least one layer apart"
            )
        levels[level] = share
        log.info("target compute %g: %d of %d layers", share, level, num_layers)
    return sorted(levels, reverse=True)
