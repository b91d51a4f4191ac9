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
import torch
import torch.nn.functional as F
from torch import nn

from drllm.router import RoutedModel, batch_prompts, check_decisions, expand_path, surgery
from drllm.router.auto import load_with_tokenizer
from drllm.router.decisions import parse_decisions
from drllm.search import progress
from drllm.search.evaluator import PathEvaluator
from drllm.search.records import check_searched_with, read_records
from drllm.search.tasks import Style, get_task
from drllm.search.tasks.style import describe, resolve_style

from . import analysis_plots
from .baselines import angular_path, calibration_statistics
from .plots import decision_shares
from .stats import bootstrap_interval, paired_difference

log = logging.getLogger(__name__)

TOP_K = 5
OVERLAP_THRESHOLD = 0.3
LENS_KEYS = (
    "kl_final_to_lens",
    "kl_lens_to_final",
    "top5_overlap",
    "entropy",
    "final_top1_rank",
    "top1_agreement",
)
SENSITIVITY_KEYS = ("reward", "margin", "fidelity")


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
    tokenizer=None,
) -> dict:
    """Analyse how a model uses its depth: geometry, logit lens, skip/repeat sensitivity, routing overlay.

    Args:
        model: a model name or folder (or, from Python, a ``RoutedModel``; then pass ``tokenizer``).
        task: the task whose prompts are analysed (``arc_easy``, ``jsonl:PATH``, ...).
        output: folder for analysis.json, the figures and report.md.
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
        tokenizer: the tokenizer, when ``model`` is a ``RoutedModel``.

    Returns:
        The analysis (what analysis.json holds).

    Raises:
        ValueError: for a bad count, decisions of the wrong length, an unknown task or an empty split.
        FileNotFoundError: when the paths file or the task's data is missing.
    """
    _check_counts(limit, fidelity_tokens, batch_size)
    task_obj = get_task(task)  # unknown names fail here, before the model loads
    fixed = _fixed(decisions)
    routed, tokenizer, name = load_with_tokenizer(model, tokenizer, device, routers, "run_analysis")
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
    final_norm(routed)  # an unknown layout fails before any work
    split = split or task_obj.default_split_eval
    examples = task_obj.load(split, data_dir=data_dir, limit=limit, strict=False)
    if not examples:
        raise ValueError(f"task {task_name!r} has no examples in split {split!r}")
    seconds, clock = {}, time.perf_counter()
    style, measured = resolve_style(style, routed, tokenizer, task_obj, None, data_dir)
    log.info("analyze %s: %s", task_name, describe(style, measured, task_obj.default_split_train))
    ev = PathEvaluator(routed, tokenizer, task_obj, None, style, max_rows=batch_size)
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
    """Write analysis.json, the figures and report.md into ``output``."""
    analysis_plots.write_all(result, Path(output))


# ---------------------------------------------------------------------- states along a path
def final_norm(routed: RoutedModel) -> nn.Module:
    """The model's final norm (``drllm.router.surgery.final_norm``)."""
    return surgery.final_norm(routed.model)


def _last_positions(mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` index of each row's last real token (left or right padding)."""
    return mask.shape[1] - 1 - mask.flip(1).long().argmax(1)


@torch.no_grad()
def path_states(
    routed: RoutedModel, input_ids, attention_mask, decisions, states: list[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """States at each row's last real token after every layer application of its path.

    Row ``r`` gets ``[K_r + 1, d]``: the embedding, then the state after each application in
    ``expand_path(decisions[r])`` order (``K_r = sum(decisions[r])``; a repeat adds the state between its
    two passes). The recorded states entering every layer give all but those between passes, which come
    from one more forward started at the repeated layer (``starting_at``) that runs it once.

    Args:
        routed: the model.
        input_ids: ``[B, T]`` prompts (left- or right-padded).
        attention_mask: ``[B, T]``, 1 on real tokens.
        decisions: ``[L]`` or ``[B, L]``.
        states: the states ``recording`` gave for this very forward, when the caller has them.
    """
    L, batch = routed.num_layers, input_ids.shape[0]
    d = check_decisions(decisions, L, batch).to(routed.device)
    ids, mask = input_ids.to(routed.device), attention_mask.to(routed.device)
    if states is None:
        with routed.recording() as states:
            routed.backbone(ids, mask, d)
    last, rows = _last_positions(mask), torch.arange(batch, device=routed.device)
    entering = torch.stack([h[rows, last] for h in states], 1)  # [B, L + 1, d]
    between = _between_passes(routed, ids, mask, d, states, last)
    out = []
    for r, path in enumerate(d.tolist()):
        seq = [entering[r, 0]]
        for i, decision in enumerate(path):
            if decision == 2:
                seq.append(between[(r, i)])
            if decision:
                seq.append(entering[r, i + 1])
        out.append(torch.stack(seq))
    return out


def _between_passes(routed, ids, mask, d, states, last) -> dict[tuple[int, int], torch.Tensor]:
    """``{(row, layer): state after the first pass}`` at the last token, for every repeat of ``d``."""
    L = routed.num_layers
    pairs = [tuple(p) for p in (d == 2).nonzero().tolist()]
    found = {}
    for k in range(0, len(pairs), ids.shape[0]):
        chunk = pairs[k : k + ids.shape[0]]
        rows = torch.tensor([r for r, _ in chunk], device=ids.device)
        layers = [i for _, i in chunk]
        hidden = torch.stack([states[i][r] for r, i in chunk])  # [b, T, d] entering the repeated layer
        once = torch.zeros(len(chunk), L, dtype=torch.long)
        once[torch.arange(len(chunk)), layers] = 1  # that layer once, nothing after it
        with routed.recording() as after, routed.starting_at(layers, hidden):
            routed.backbone(ids[rows], mask[rows], once)
        picked = after[L][torch.arange(len(chunk), device=ids.device), last[rows]]
        found.update({pair: picked[j] for j, pair in enumerate(chunk)})
    return found


@torch.no_grad()
def lens_logits(routed: RoutedModel, states: torch.Tensor) -> torch.Tensor:
    """Logit-lens logits ``[..., V]`` of states ``[..., d]``: final norm, LM head, softcapping."""
    return routed.lm_logits(final_norm(routed)(states))


def lens_metrics(logits: torch.Tensor) -> dict[str, list[float]]:
    """Per state, the lens metrics of the module docstring against the last state's distribution.

    Args:
        logits: ``[K + 1, V]`` lens logits along one path; the last row is the model's output.
    """
    logq = logits.float().log_softmax(-1)  # [K + 1, V]
    logp = logq[-1]
    p, q = logp.exp(), logq.exp()
    k = min(TOP_K, logq.shape[-1])
    winner = int(logp.argmax())
    overlap = torch.isin(logq.topk(k, dim=-1).indices, logp.topk(k).indices).sum(-1) / k
    values = {
        "kl_final_to_lens": (p * (logp - logq)).sum(-1).clamp(min=0),
        "kl_lens_to_final": (q * (logq - logp)).sum(-1).clamp(min=0),
        "top5_overlap": overlap,
        "entropy": -(q * logq).sum(-1),
        "final_top1_rank": (logq > logq[:, winner : winner + 1]).sum(-1),
    }
    values["top1_agreement"] = (values["final_top1_rank"] == 0).float()
    return {key: [float(x) for x in v.tolist()] for key, v in values.items()}


def effective_depth(kl, overlap, layers=None) -> dict:
    """Effective depth by the KL and top-5 criteria of the module docstring.

    Args:
        kl: ``KL(p || q_l)`` for states ``l = 0 .. K``.
        overlap: top-5 overlap for the same states.
        layers: the layer each application ran (``expand_path`` of the path; default ``0 .. K - 1``).

    Returns:
        ``{"kl": {...}, "top5": {...}}``, each with ``layer`` (the layer whose output reaches it),
        ``depth`` (applications to reach it) and ``ratio`` (``depth / K``).
    """
    kl, overlap = np.asarray(kl, dtype=float), np.asarray(overlap, dtype=float)
    K = len(kl) - 1
    if K < 1 or len(overlap) != K + 1:
        raise ValueError(
            f"effective depth needs two curves of the same length >= 2, got {len(kl)}, {len(overlap)}"
        )
    layers = list(range(K)) if layers is None else list(layers)
    out = {}
    for name, ok in (("kl", kl <= kl[1:].max() / 2), ("top5", overlap > OVERLAP_THRESHOLD)):
        depth = K + 1
        while depth > 1 and ok[depth - 1]:
            depth -= 1
        if depth > K:  # the last state always qualifies; only non-finite curves get here
            out[name] = {"layer": None, "depth": None, "ratio": None}
        else:
            out[name] = {"layer": layers[depth - 1], "depth": depth, "ratio": depth / K}
    return out


class _Geometry:
    """Sums of the residual geometry of 1 over batches (real tokens but each prompt's first)."""

    def __init__(self, num_layers: int):
        self.norm = torch.zeros(num_layers, dtype=torch.float64)
        self.cosine = torch.zeros(num_layers, dtype=torch.float64)
        self.tokens = 0

    def add(self, states: list[torch.Tensor], mask: torch.Tensor) -> None:
        keep = mask.bool() & (mask.cumsum(1) > 1)  # [B, T]
        self.tokens += int(keep.sum())
        for i in range(len(self.norm)):
            h = states[i].float()[keep]  # [n, d]
            update = states[i + 1].float()[keep] - h
            self.norm[i] += float((update.norm(dim=-1) / h.norm(dim=-1).clamp(min=1e-12)).sum())
            self.cosine[i] += float(F.cosine_similarity(update, h, dim=-1).sum())

    def result(self) -> dict:
        if self.tokens == 0:
            raise ValueError("residual geometry needs prompts of 2 or more tokens (each first is left out)")
        return {
            "relative_update_norm": (self.norm / self.tokens).tolist(),
            "update_cosine": (self.cosine / self.tokens).tolist(),
            "tokens": self.tokens,
        }


@torch.no_grad()
def depth_pass(routed, tokenizer, prompts, decisions, batch_size: int = 16, geometry=None) -> list[dict]:
    """Per prompt, the lens metrics and effective depth along its path (one recorded forward per batch).

    Returns:
        One ``{"metrics", "depth", "layers"}`` per prompt: ``lens_metrics`` along the path,
        ``effective_depth`` and the layers the path executes.
    """
    out = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = batch_prompts(tokenizer, prompts[start : start + batch_size], routed.device)
        d = torch.tensor(decisions[start : start + batch_size], dtype=torch.long)
        with routed.recording() as states:
            routed.backbone(ids, mask, d)
        if geometry is not None:
            geometry.add(states, mask)
        for path, seq in zip(d.tolist(), path_states(routed, ids, mask, d, states), strict=True):
            metrics = lens_metrics(lens_logits(routed, seq))
            order = expand_path(path)
            depth = effective_depth(metrics["kl_final_to_lens"], metrics["top5_overlap"], order)
            out.append({"metrics": metrics, "depth": depth, "layers": len(order)})
    return out


# ---------------------------------------------------------------------- summaries
def _angular(stats) -> dict:
    L = stats.num_layers
    d = stats.angular.t()  # [l, n]
    blocks = []
    for n in range(1, L):
        path = angular_path(stats, n)
        first = path.index(0)
        blocks.append(
            {"n": n, "start": first, "layers": list(range(first, first + n)), "distance": float(d[first, n])}
        )
    return {
        "d": [[_finite(x) for x in row] for row in d.tolist()],
        "pruned_block": blocks,
        "block_influence": stats.block_influence.tolist(),
        "prompts": stats.prompts,
    }


def _lens_summary(per_prompt: list[dict], num_layers: int) -> dict:
    mean = {key: np.mean([p["metrics"][key] for p in per_prompt], axis=0).tolist() for key in LENS_KEYS}
    return {
        "position": "each prompt's last real token",
        **mean,
        "effective_depth": effective_depth(mean["kl_final_to_lens"], mean["top5_overlap"]),
        "effective_depth_per_prompt": _depth_intervals(per_prompt),
        "cosine_curve": "residual_geometry.update_cosine",
    }


def _depth_intervals(per_prompt: list[dict]) -> dict:
    """Per criterion, the mean depth and ratio over prompts with 95% bootstrap intervals."""
    out = {}
    for name in ("kl", "top5"):
        out[name] = {}
        for what in ("depth", "ratio"):
            values = [p["depth"][name][what] for p in per_prompt if p["depth"][name][what] is not None]
            out[name][what] = bootstrap_interval(values).as_dict() if values else None
    return out


def per_layer_curves(result: dict) -> dict[str, list[float | None]]:
    """The per-layer curves (length ``L``) of analyses 1-4 that routing decisions are compared with."""
    geometry, angular = result["residual_geometry"], result["angular_distance"]
    kl = result["logit_lens"]["kl_final_to_lens"]
    curves = {
        "relative_update_norm": geometry["relative_update_norm"],
        "update_cosine": geometry["update_cosine"],
        "block_influence": angular["block_influence"],
        "angular_distance_next": [row[1] for row in angular["d"][:-1]],  # d(l, 1)
        "lens_kl_drop": [kl[i] - kl[i + 1] for i in range(len(kl) - 1)],
    }
    for kind in ("skip", "repeat"):
        for key in SENSITIVITY_KEYS:
            column = result["sensitivity"][kind][f"delta_{key}"]
            curves[f"{kind}_delta_{key}"] = [None if c is None else c["value"] for c in column]
    return curves


def spearman(x, y) -> float | None:
    """Spearman's rank correlation (average ranks for ties) over the pairs where both are finite.

    Returns None with fewer than 3 such pairs or when either side is constant.
    """
    a = np.array([np.nan if v is None else v for v in x], dtype=float)
    b = np.array([np.nan if v is None else v for v in y], dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return None
    ra, rb = _average_ranks(a[ok]), _average_ranks(b[ok])
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def _average_ranks(values: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(values))
    ranks[values.argsort(kind="mergesort")] = np.arange(len(values), dtype=float)
    for v in np.unique(values):
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    return ranks


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


# ---------------------------------------------------------------------- 5: routing overlay
def _route(routed: RoutedModel, tokenizer, prompts: list[str], batch_size: int) -> list[list[int]]:
    """The routers' decisions on each prompt at budget 0."""
    old, routed.budget = routed.budget, 0.0
    try:
        out = []
        for start in range(0, len(prompts), batch_size):
            ids, mask = batch_prompts(tokenizer, prompts[start : start + batch_size], routed.device)
            out += routed.route(ids, mask).tolist()
        return out
    finally:
        routed.budget = old


def _decision_sources(routed, tokenizer, prompts, records, paths, fixed, batch_size) -> dict:
    """``{key: (description, prompts, decisions)}`` for every routing given to overlay."""
    sources = {}
    if routed.routers is not None:
        sources["routers"] = ("routers at budget 0", prompts, _route(routed, tokenizer, prompts, batch_size))
    if records is not None:
        sources["paths"] = (
            f"search paths {paths}",
            [r.prompt for r in records],
            [r.decisions for r in records],
        )
    if fixed is not None:
        sources["decisions"] = ("fixed path " + ",".join(map(str, fixed)), prompts, [fixed] * len(prompts))
    return sources


def _overlay(source: str, decisions: list[list[int]]) -> dict:
    shares = decision_shares(decisions)  # [3, L]
    return {
        "source": source,
        "prompts": len(decisions),
        "mean_layers": float(np.mean([sum(d) for d in decisions])),
        "skip_share": shares[0].tolist(),
        "execute_share": shares[1].tolist(),
        "repeat_share": shares[2].tolist(),
        "decisions": [list(d) for d in decisions],
    }


def _overlay_depth(overlay: dict, routed, tokenizer, prompts, batch_size: int, base=None) -> None:
    """Effective depth along each prompt's own path against the base on the same prompts."""
    L = routed.num_layers
    routed_pass = depth_pass(routed, tokenizer, prompts, overlay["decisions"], batch_size)
    if base is None:
        base = depth_pass(routed, tokenizer, prompts, [[1] * L] * len(prompts), batch_size)
    depth = {"routed": _depth_intervals(routed_pass), "base": _depth_intervals(base)}
    for name in ("kl", "top5"):
        pairs = [
            (a["depth"][name]["ratio"], b["depth"][name]["ratio"])
            for a, b in zip(routed_pass, base, strict=True)
            if a["depth"][name]["ratio"] is not None and b["depth"][name]["ratio"] is not None
        ]
        difference = paired_difference(*zip(*pairs, strict=True)) if pairs else None
        depth[f"ratio_difference_{name}"] = None if difference is None else difference.as_dict()
    overlay["effective_depth"] = depth


def _overlay_correlations(overlay: dict, curves: dict) -> None:
    overlay["spearman"] = {
        share: {name: spearman(overlay[share], curve) for name, curve in curves.items()}
        for share in ("skip_share", "repeat_share")
    }


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
    if decisions is None or isinstance(decisions, (list, tuple)):
        return None if decisions is None else list(decisions)
    return parse_decisions(str(decisions))


def _mean(values) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
