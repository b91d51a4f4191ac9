"""``run_analysis``: how a model uses its depth, on the base path and on any routed path.

    run_analysis("smollm2-135m-instruct", "arc_easy", "runs/analysis", routers="runs/demo/routers")
    result = analyze_depth(routed, tokenizer, "arc_easy", limit=16)  # the same numbers, no files

Notation: ``h_l`` is the hidden state entering layer ``l`` (``h_0``: the embeddings) and ``h_L`` the last
layer's output before the final norm. Layers are numbered from 0, as decision vectors index them, in every
file and figure. Curves over states have ``L + 1`` entries (``h_0 .. h_L``), curves over layers ``L``.

1. Residual geometry, per layer ``l``, averaged over every real token ``t`` except each prompt's first
   (position 0 holds an outsized state, the attention sink, that would dominate every mean)::

       relative_update_norm[l] = mean_t ||h_{l+1,t} - h_{l,t}|| / ||h_{l,t}||
       update_cosine[l]        = mean_t cos(h_{l+1,t} - h_{l,t}, h_{l,t})

   A negative cosine means the layer partly erases the residual stream, a positive one that it amplifies it.
2. Angular distance (Gromov et al. 2024) at each prompt's last token, for every start ``l`` and length ``n``::

       d(l, n) = mean_prompts arccos(cos(h_l, h_{l+n})) / pi

   and for each ``n`` the block ``l*(n) .. l*(n) + n - 1``, ``l*(n) = argmin_l d(l, n)``, that Gromov-style
   pruning removes (keeping the final layer, as ``baselines.angular_path``). Block influence (ShortGPT, Men
   et al. 2024): ``BI_l = 1 - mean_t cos(h_l, h_{l+1})`` over the tokens of 1. Both come from
   ``baselines.calibration_statistics`` on the analysed prompts.
3. Logit lens (nostalgebraist 2020) through the model's own final norm and LM head, softcapping included:
   ``q_l = softmax(lm_logits(final_norm(h_l)))``, ``p = q_L`` the model's output. At each prompt's last real
   token only (the position whose next token the task scores; a vocabulary-wide head at every token would
   cost more than the rest of the analysis), for every state ``l = 0 .. L``::

       kl_final_to_lens[l] = KL(p || q_l)            kl_lens_to_final[l] = KL(q_l || p)
       top5_overlap[l]     = |top5(q_l) & top5(p)| / 5
       entropy[l]          = H(q_l)                  final_top1_rank[l]  = #{v : q_l(v) > q_l(argmax p)}
       top1_agreement[l]   = 1 if final_top1_rank[l] == 0 (averaged: the share of prompts)

   Effective depth (after arXiv 2512.14064), made robust to curves that are not monotone: over the layer
   outputs ``l = 1 .. L`` (not the embedding),

   - ``kl``: the smallest ``l`` with ``KL(p || q_m) <= max_{m >= 1} KL(p || q_m) / 2`` for every ``m >= l``;
   - ``top5``: the smallest ``l`` with ``top5_overlap[m] > 0.3`` for every ``m >= l``;

   reported as the layer whose output it is (``l - 1``), the layers executed to reach it (``depth = l``)
   and ``ratio = l / L``; from the mean curves, and per prompt (mean with a 95% bootstrap interval). The
   third view is the whole ``update_cosine`` curve of 1.
4. Skip and repeat sensitivity, likelihood against generation (arXiv 2510.02091): for every single-layer
   skip (``d_i = 0``) and repeat (``d_i = 2``), per example ``path - base`` of the task score (``reward``,
   1 when correct), of the gold margin (``Outcome.margin``: the gold option's log-likelihood minus the best
   wrong one's, or the target's mean token log-probability) and of greedy fidelity (leading tokens of the
   base model's ``fidelity_tokens``-token greedy continuation the path reproduces, packed into the scoring
   row), each a mean with a 95% bootstrap interval (``PathEvaluator.outcomes``).
5. Routing overlay: decisions of routers (on the analysed prompts, at budget 0), of a search paths file
   (each record's path on its own prompt) or one fixed path. Per layer, the share of prompts that skip and
   that repeat it; Spearman correlations (of average ranks) of those shares with the per-layer curves of
   1-4; and the logit lens along each prompt's own path against the base on the same prompts: states after
   every layer application (a repeat adds one state, so repeats count as extra depth), effective depth as in
   3 with ``L`` replaced by the layers the path executes.

Outputs in ``output``: ``analysis.json`` (every curve, named as above), ``residual.png``, ``angular.png``,
``logit_lens.png``, ``sensitivity.png``, ``overlay.png`` (with an overlay) and ``report.md``.

Cost: two all-execute passes over the prompts (the angular statistics and one recorded pass for 1 and 3),
the base greedy continuations, and ``2 L`` paths per example for 4, each started at its changed layer from
recorded states (about ``N L (L + 1)`` layer applications to the scoring rows): 4 dominates.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from drllm.router import RoutedModel, check_decisions
from drllm.router.auto import load_with_tokenizer
from drllm.router.decisions import parse_decisions
from drllm.search import progress
from drllm.search.evaluator import PathEvaluator
from drllm.search.output_files import claimed_output
from drllm.search.records import check_block_paths, check_searched_with, read_records
from drllm.search.tasks import Style, get_task, require_gold, same_task
from drllm.search.tasks.style import describe, resolve_style

from . import analysis_plots
from .baselines import calibration_statistics
from .depth import (  # noqa: F401 - moved; importable from here as before
    OVERLAP_THRESHOLD,
    TOP_K,
    _between_passes,
    _Geometry,
    _last_positions,
    depth_pass,
    effective_depth,
    final_norm,
    lens_logits,
    lens_metrics,
    path_states,
)
from .overlay import (  # noqa: F401 - moved; importable from here as before
    _decision_sources,
    _overlay,
    _overlay_correlations,
    _overlay_depth,
    _route,
)
from .stats import bootstrap_interval
from .summaries import (  # noqa: F401 - moved; importable from here as before
    LENS_KEYS,
    SENSITIVITY_KEYS,
    _angular,
    _average_ranks,
    _depth_intervals,
    _finite,
    _lens_summary,
    per_layer_curves,
    spearman,
)

log = logging.getLogger(__name__)


def run_analysis(
    model: str,
    task: str,
    output: str,
    limit: int = 64,
    routers: str | None = None,
    paths: str | None = None,
    decisions: str | None = None,
    split: str | None = None,
    fidelity_tokens: int = 16,
    data_dir: str | None = None,
    style: Style = "auto",
    batch_size: int = 16,
    device: str | None = None,
    dtype: str | None = None,
    tokenizer=None,
) -> dict:
    """Analyse how a model uses its depth: geometry, logit lens, skip/repeat sensitivity, routing overlay.

    Args:
        model: a model name or folder (or, from Python, a ``RoutedModel``; then pass ``tokenizer``).
        task: the task whose prompts are analysed (``arc_easy``, ``jsonl:PATH``, ...).
        output: folder for analysis.json, the figures and report.md: new, empty, or an earlier analyze
            output (whose analyze files are replaced; analyze never overwrites files it did not write).
        limit: prompts analysed (the first of the split).
        routers: folder of saved routers, overlaid with their decisions at budget 0 on the same prompts
            (None keeps the routers already on a ``RoutedModel``, or none).
        paths: a search output file (paths.jsonl) to overlay: each record's path on its own prompt.
        decisions: one fixed path to overlay, such as "1,1,0,2,..." (0 skip, 1 execute, 2 repeat).
        split: the split (default: the task's evaluation split).
        fidelity_tokens: tokens of the base model's greedy continuation checked for greedy fidelity
            (0 turns fidelity off).
        data_dir: benchmark data folder.
        style: prompt style: plain, chat or auto (chosen on the training split, as search does).
        batch_size: rows per forward pass.
        device: where the model runs (auto: CUDA when available, else the CPU; or cpu, cuda, cuda:N).
        dtype: the model's dtype: auto or None keeps the checkpoint's; float32, bfloat16 or float16.
        tokenizer: the tokenizer, when ``model`` is a ``RoutedModel``.

    Returns:
        The analysis (what analysis.json holds).

    Raises:
        ValueError: for a bad count, decisions of the wrong length, an unknown task, an empty split, or an
            output that is a file or a folder of files analyze did not write.
        FileNotFoundError: when the paths file or the task's data is missing.
    """
    _check_counts(limit, fidelity_tokens, batch_size)
    analysis_plots.check_analysis_output(output)  # a file, or a folder of others' files: refused up front
    task_obj = get_task(task)  # unknown names fail here, before the model loads
    require_gold(task_obj, "drllm analyze (it measures accuracy at every depth)")
    fixed = _fixed(decisions)
    with claimed_output(output, folder=True):  # writable; a folder it creates goes again on failure
        routed, tokenizer, name = load_with_tokenizer(
            model, tokenizer, device, routers, "run_analysis", dtype
        )
        result = analyze_depth(
            routed,
            tokenizer,
            task_obj,
            limit=limit,
            paths=paths,
            decisions=fixed,
            split=split,
            fidelity_tokens=fidelity_tokens,
            data_dir=data_dir,
            style=style,
            batch_size=batch_size,
            model_name=name,
            task_name=task,
        )
        write_analysis(result, output)
    return result


def analyze_depth(
    routed: RoutedModel,
    tokenizer,
    task,
    limit: int = 64,
    paths: str | None = None,
    decisions=None,
    split: str | None = None,
    fidelity_tokens: int = 16,
    data_dir: str | None = None,
    style: Style = "auto",
    batch_size: int = 16,
    model_name: str = "model",
    task_name: str | None = None,
) -> dict:
    """Every analysis of the module docstring, as a JSON-ready dict (nothing written).

    ``task`` is a name or a task object, ``decisions`` one path (a string or a list); the routers
    overlay is made whenever ``routed`` carries routers. The other arguments are ``run_analysis``'s.
    """
    _check_counts(limit, fidelity_tokens, batch_size)
    task_obj = get_task(task) if isinstance(task, str) else task
    task_name = task_name or (task if isinstance(task, str) else task_obj.name)
    L = routed.num_layers
    fixed = None if decisions is None else check_decisions(_fixed(decisions), L)[0].tolist()
    records = read_records(paths, num_layers=L)[:limit] if paths else None
    if records:
        check_searched_with(records, routed, paths)
        check_block_paths(records, paths, "the overlay reads block paths")
        other = next((r.task for r in records if r.task and not same_task(r.task, task_name)), None)
        if other is not None:
            raise ValueError(
                f"{paths} holds paths searched on task {other!r}, not {task_name!r}: overlay a paths file "
                "of the analysed task"
            )
    final_norm(routed)  # an unknown layout fails before any work
    split = split or task_obj.default_split_eval
    examples = task_obj.load(split, data_dir=data_dir, limit=limit, strict=False)
    if not examples:
        raise ValueError(f"task {task_name!r} has no examples in split {split!r}")
    seconds, clock = {}, time.perf_counter()
    style, measured = resolve_style(style, routed, tokenizer, task_obj, None, data_dir)
    log.info("analyze %s: %s", task_name, describe(style, measured, task_obj.default_split_train))
    ev = PathEvaluator(routed, tokenizer, task_obj, None, style, max_rows=batch_size)
    ev.check_room(examples, fidelity_tokens)  # before any forward
    prompts = [ev.prompt_text(ex) for ex in examples]
    seconds["style"], clock = time.perf_counter() - clock, time.perf_counter()

    log.info("analyze: residual geometry and logit lens on %d prompts", len(prompts))
    geometry = _Geometry(L)
    base = depth_pass(routed, tokenizer, prompts, [[1] * L] * len(prompts), batch_size, geometry)
    stats = calibration_statistics(routed, tokenizer, prompts, batch_size=batch_size)
    seconds["geometry_and_lens"], clock = time.perf_counter() - clock, time.perf_counter()
    sensitivity = layer_sensitivity(ev, examples, fidelity_tokens)
    seconds["sensitivity"], clock = time.perf_counter() - clock, time.perf_counter()

    result = {
        "model": model_name,
        "task": task_name,
        "split": split,
        "style": style,
        "scoring": ev.scoring,
        "prompts": len(prompts),
        "num_layers": L,
        "layer_numbering": "layers are numbered from 0; state l (h_l) enters layer l, state L is the "
        "last layer's output before the final norm",
        "residual_geometry": geometry.result(),
        "angular_distance": _angular(stats),
        "logit_lens": _lens_summary(base, L),
        "sensitivity": sensitivity,
    }
    sources = _decision_sources(routed, tokenizer, prompts, records, paths, fixed, batch_size)
    overlays = {}
    for key, (source, texts, decided) in sources.items():
        overlays[key] = _overlay(source, decided)
        same = base if texts is prompts else None
        _overlay_depth(overlays[key], routed, tokenizer, texts, batch_size, same)
        _overlay_correlations(overlays[key], per_layer_curves(result))
    result["overlays"] = overlays
    seconds["overlays"] = time.perf_counter() - clock
    result["seconds"] = seconds
    log.info("analyze: done (%s)", ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    return result


def write_analysis(result: dict, output: str | Path) -> None:
    """Write analysis.json, the figures and report.md into ``output``, replacing an earlier run's.

    Raises:
        ValueError: for an output that is a file, or a folder of files analyze did not write.
    """
    analysis_plots.write_all(result, Path(output))


# ---------------------------------------------------------------------- 4: skip and repeat sensitivity
def layer_sensitivity(ev: PathEvaluator, examples, fidelity_tokens: int) -> dict:
    """Analysis 4: every single-layer skip and repeat against the base path (see the module docstring)."""
    L = ev.routed.num_layers
    base_path = (1,) * L
    paths = [
        (kind, i, base_path[:i] + (v,) + base_path[i + 1 :])
        for i in range(L)
        for kind, v in (("skip", 0), ("repeat", 2))
    ]
    continuations = None
    if fidelity_tokens:
        log.info("analyze: base greedy continuations (%d tokens)", fidelity_tokens)
        continuations = ev.greedy_continuations(examples, fidelity_tokens)
    deltas = {(kind, key): [[] for _ in range(L)] for kind in ("skip", "repeat") for key in SENSITIVITY_KEYS}
    base_values = {key: [] for key in SENSITIVITY_KEYS}
    chunk = 4 * ev.max_rows
    bar = progress.bar(len(examples) * len(paths), "analyze: skips and repeats", "path")
    for start in range(0, len(examples), chunk):
        conts = None if continuations is None else continuations[start : start + chunk]
        prepared = ev.prepare(examples[start : start + chunk], start, conts)
        bases = ev.outcomes([(p, base_path) for p in prepared])  # records every prefix, batched
        for p, base in zip(prepared, bases, strict=True):
            for key in SENSITIVITY_KEYS:
                base_values[key].append(getattr(base, key))
            for (kind, i, _), outcome in zip(
                paths, ev.outcomes([(p, path) for _, _, path in paths]), strict=True
            ):
                for key in SENSITIVITY_KEYS:
                    new, old = getattr(outcome, key), getattr(base, key)
                    if new is not None and old is not None:
                        deltas[(kind, key)][i].append(float(new) - float(old))
            ev.release(p)
            bar.update(len(paths))
    bar.close()
    out = {
        "base": {key: _mean(v) for key, v in base_values.items()},
        "fidelity_tokens": fidelity_tokens,
        "continuation_tokens": None if continuations is None else _mean([len(c) for c in continuations]),
    }
    for kind in ("skip", "repeat"):
        out[kind] = {
            f"delta_{key}": [bootstrap_interval(v).as_dict() if v else None for v in deltas[(kind, key)]]
            for key in SENSITIVITY_KEYS
        }
    out["safest_skips"] = {
        "likelihood": _ranked(out["skip"]["delta_margin"]),
        "fidelity": _ranked(out["skip"]["delta_fidelity"]),
    }
    return out


def _ranked(column: list[dict | None]) -> dict | None:
    """The five layers (``L // 2`` if fewer) whose skip changes a score least (``most``), most (``least``)."""
    count = max(1, min(5, len(column) // 2))
    scored = [(c["value"], i) for i, c in enumerate(column) if c is not None]
    if not scored:
        return None
    order = [i for _, i in sorted(scored, key=lambda t: (-t[0], t[1]))]
    return {"most": order[:count], "least": order[::-1][:count]}


# ---------------------------------------------------------------------- helpers
def _check_counts(limit: int, fidelity_tokens: int, batch_size: int) -> None:
    for name, value, least in (
        ("limit", limit, 1),
        ("fidelity_tokens", fidelity_tokens, 0),
        ("batch_size", batch_size, 1),
    ):
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}")


def _fixed(decisions) -> list[int] | None:
    if decisions is None:
        return None
    path = list(decisions) if isinstance(decisions, (list, tuple)) else parse_decisions(str(decisions))
    if not any(path):
        raise ValueError(
            "--decisions skips every layer: the depth analysis follows a path through at least one layer"
        )
    return path


def _mean(values) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None
