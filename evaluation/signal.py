"""``drllm signal``: is there per-input signal for routing, or does one static choice do as well?

A router earns its keep only if the best layer decision differs between inputs *in a way the prompt
predicts*. This test asks that question on the cheapest decisions there are, with nothing trained: for
every searched example the single-edit sweep (``drllm search --sweep``) holds the gold margin after
skipping each layer and after repeating each layer. For a held-out example, three predictors choose the
one layer to skip (and, separately, the one layer to repeat), in k-fold cross-validation over examples:

- ``static``: the layer whose edit costs least on average over the training folds: one choice for all;
- ``knn``: the layer whose edit costs least on average over the ``k`` training prompts nearest to this one
  (cosine similarity of the prompt's mean hidden state at a middle layer, first token excluded, centred);
- ``knn-shuffled``: the same with the training prompts' features shuffled, so the neighbours are ``k``
  random prompts: what ``knn`` gets with no per-input information (the shuffled-feature control).

``oracle`` picks each example's own best layer (an upper bound that needs the answer). Every predictor is
scored by the margin change its choice really causes on the held-out example and, for multiple choice, by
accuracy after the edit (the gold margin stays above 0), with bootstrap intervals; ``knn`` is compared,
paired on the same examples, with ``static`` and with ``knn-shuffled``. Per-input signal is shown only
when ``knn`` beats both. Protected layers (default: the first two and the last) are never chosen.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from drllm.router import batch_prompts
from drllm.router.auto import load_with_tokenizer
from drllm.router.pooling import pooling_mask
from drllm.search import progress
from drllm.search.records import check_output, check_searched_with, read_records

from .report import atomic_write_text
from .stats import bootstrap_interval, mcnemar_exact, paired_difference

log = logging.getLogger(__name__)
PREDICTORS = ("static", "knn", "knn-shuffled", "oracle")
EDITS = ("skip", "repeat")


@dataclass
class SweepTable:
    """The single-edit sweep of every record.

    ``base`` [N] holds the gold margins with all layers, ``edits[kind]`` [N, L] the margins after one skip
    (or repeat) of each layer.
    """

    ids: list[str]
    prompts: list[str]
    base: np.ndarray
    edits: dict[str, np.ndarray]
    choice: bool

    @property
    def num_layers(self) -> int:
        """Decoder layers of the model the sweep was made on."""
        return self.edits["skip"].shape[1]


def sweep_table(records, source: str = "paths") -> SweepTable:
    """Collect the single-edit sweep of every record; refuse records searched without one, by name."""
    missing = [r.id for r in records if not (r.supervision or {}).get("sweep")]
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} of {len(records)} records have no single-edit sweep (first: "
            f"{missing[0]!r}); search them with --sweep true"
        )
    if len(records) < 4:
        raise ValueError(f"{source}: {len(records)} records; the test needs at least 4")
    base = np.array([r.supervision["base_margin"] for r in records], dtype=float)
    edits = {k: np.array([r.supervision["sweep"][k] for r in records], dtype=float) for k in EDITS}
    if not all(np.isfinite(a).all() for a in (base, *edits.values())):
        raise ValueError(f"{source}: a sweep margin is missing or not finite")
    choice = all((r.scoring or "").startswith("mc-") for r in records)
    return SweepTable([r.id for r in records], [r.prompt for r in records], base, edits, choice)


@torch.no_grad()
def prompt_features(routed, tokenizer, prompts: list[str], layer: int | None = None, batch_size: int = 8):
    """``[N, d]``: each prompt's mean hidden state entering ``layer`` (default: the middle one).

    The mean runs over the prompt's tokens but the first (often an attention sink with an outsized norm),
    the routers' own ``pooling_mask`` (a one-token prompt keeps its token).
    """
    layer = routed.num_layers // 2 if layer is None else layer
    if not 0 <= layer < routed.num_layers:
        raise ValueError(f"layer must lie in 0..{routed.num_layers - 1}, got {layer}")
    out = []
    bar = progress.bar(len(prompts), "prompt features", "prompt")
    for start in range(0, len(prompts), batch_size):
        ids, mask = batch_prompts(tokenizer, prompts[start : start + batch_size], routed.device)
        with routed.recording() as states:
            routed.backbone(ids, mask, torch.ones(routed.num_layers, dtype=torch.long))
        keep = pooling_mask(mask, *mask.shape, skip_first=True).unsqueeze(-1).float()
        hidden = states[layer].float() * keep
        out.append((hidden.sum(1) / keep.sum(1).clamp(min=1)).cpu())
        bar.update(len(ids))
    bar.close()
    return torch.cat(out).numpy()


def _allowed(num_layers: int, protect: tuple[int, ...]) -> np.ndarray:
    allowed = np.ones(num_layers, dtype=bool)
    for p in protect:
        if not -num_layers <= p < num_layers:
            raise ValueError(f"protected layer {p} does not exist in a {num_layers}-layer model")
        allowed[p] = False
    if not allowed.any():
        raise ValueError("every layer is protected; nothing is left to choose")
    return allowed


def check_neighbours(k: int, folds: int, n: int) -> None:
    """Refuse ``k`` and ``folds`` that leave the nearest-prompt test meaningless on ``n`` prompts.

    With ``k`` as large as a fold's training prompts, every prompt is every other's neighbour and ``knn``
    silently becomes the ``static`` choice.
    """
    if not 2 <= folds <= n:
        raise ValueError(f"folds must lie in 2..{n} (the prompts), got {folds}")
    smallest = n - -(-n // folds)  # training prompts of the largest held-out fold
    if k < 1 or k >= smallest:
        raise ValueError(
            f"k={k} neighbours of {smallest} training prompts per fold: k must lie in 1..{smallest - 1}, "
            "or knn is just the static choice (lower --k, or give more prompts)"
        )


def _choices(features: np.ndarray, delta: np.ndarray, allowed: np.ndarray, k: int, folds: int, seed: int):
    """Cross-validated chosen layer per example and predictor (``[N]`` each)."""
    n = len(delta)
    rng = np.random.default_rng(seed)
    fold = rng.permutation(n) % folds
    x = features - features.mean(0, keepdims=True)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    masked = np.where(allowed, delta, -np.inf)
    chosen = {p: np.zeros(n, dtype=int) for p in PREDICTORS}
    chosen["oracle"] = masked.argmax(1)
    for f in range(folds):
        test, train = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
        mean = np.where(allowed, delta[train].mean(0), -np.inf)
        chosen["static"][test] = mean.argmax()
        for name, feats in (("knn", x[train]), ("knn-shuffled", x[train][rng.permutation(len(train))])):
            sims = x[test] @ feats.T
            near = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            pred = np.where(allowed, delta[train][near].mean(1), -np.inf)
            chosen[name][test] = pred.argmax(1)
    return chosen


def signal_test(
    features: np.ndarray,
    table: SweepTable,
    k: int = 16,
    folds: int = 5,
    protect: tuple[int, ...] | None = None,
    seed: int = 0,
) -> dict:
    """Score every predictor on every edit kind (see the module docstring); plain numbers, JSON-ready."""
    n, L = len(table.ids), table.num_layers
    if len(features) != n:
        raise ValueError(f"{len(features)} feature rows for {n} examples")
    check_neighbours(k, folds, n)
    protect = (0, 1, L - 1) if protect is None else tuple(protect)
    allowed = _allowed(L, protect)
    result = {"examples": n, "num_layers": L, "k": k, "folds": folds, "protected": list(protect), "edits": {}}
    rows = np.arange(n)
    for kind in EDITS:
        delta = table.edits[kind] - table.base[:, None]
        chosen = _choices(features, delta, allowed, k, folds, seed)
        gain = {p: delta[rows, c] for p, c in chosen.items()}
        right = {p: (table.base + g) > 0 for p, g in gain.items()}
        entry = {"base_accuracy": float((table.base > 0).mean()) if table.choice else None, "predictors": {}}
        for p in PREDICTORS:
            e = {
                "margin_change": bootstrap_interval(gain[p]).as_dict(),
                "regret": bootstrap_interval(gain["oracle"] - gain[p]).as_dict(),
                "distinct_layers": int(len(set(chosen[p].tolist()))),
                "most_chosen_layer": int(np.bincount(chosen[p], minlength=L).argmax()),
            }
            if table.choice:
                e["accuracy"] = bootstrap_interval(right[p].astype(float)).as_dict()
            entry["predictors"][p] = e
        for other in ("static", "knn-shuffled"):
            cmp = {"margin_change": paired_difference(gain["knn"], gain[other]).as_dict()}
            if table.choice:
                cmp["accuracy"] = paired_difference(right["knn"], right[other]).as_dict()
                cmp["mcnemar_p"] = mcnemar_exact(right["knn"].tolist(), right[other].tolist())
            entry[f"knn_vs_{other}"] = cmp
        entry["signal"] = all(
            entry[f"knn_vs_{o}"]["margin_change"]["low"] > 0 for o in ("static", "knn-shuffled")
        )
        result["edits"][kind] = entry
    return result


def format_signal(result: dict) -> str:
    """The result as a Markdown report: one table per edit kind and a verdict in words."""
    lines = [
        f"# Per-input signal: {result['examples']} examples, {result['num_layers']} layers",
        "",
        f"Cross-validated ({result['folds']} folds), k = {result['k']} nearest prompts, protected layers "
        f"{result['protected']}. Margin change: gold margin after the chosen edit minus before (higher is "
        "better); regret: the example's best edit's margin change minus the chosen one's. 95% bootstrap "
        "intervals.",
    ]
    for kind, e in result["edits"].items():
        lines += ["", f"## Choosing one layer to {kind}", ""]
        head = "| predictor | margin change | regret | accuracy % | distinct layers | most chosen |"
        lines += [head, "|---|---:|---:|---:|---:|---:|"]
        for p, v in e["predictors"].items():
            acc = v.get("accuracy")
            acc_text = (
                f"{100 * acc['value']:.1f} [{100 * acc['low']:.1f}, {100 * acc['high']:.1f}]" if acc else "-"
            )
            lines.append(
                f"| {p} | {_iv(v['margin_change'])} | {_iv(v['regret'])} | {acc_text} | "
                f"{v['distinct_layers']} | {v['most_chosen_layer']} |"
            )
        if e["base_accuracy"] is not None:
            lines += ["", f"Base accuracy (no edit): {100 * e['base_accuracy']:.1f}%."]
        for other in ("static", "knn-shuffled"):
            c = e[f"knn_vs_{other}"]
            text = f"- knn - {other}: margin change {_iv(c['margin_change'], sign=True)}"
            if "accuracy" in c:
                a = c["accuracy"]
                text += (
                    f", accuracy {100 * a['value']:+.1f} points "
                    f"[{100 * a['low']:+.1f}, {100 * a['high']:+.1f}], "
                    f"McNemar p = {c['mcnemar_p']:.3g}"
                )
            lines.append(text)
        verdict = (
            "the nearest prompts predict which layer to "
            f"{kind} better than one static choice and better than random prompts: per-input signal."
            if e["signal"]
            else f"knn does not beat both the static choice and its shuffled control: no per-input signal "
            f"for which layer to {kind} is shown here."
        )
        lines += ["", f"Verdict: {verdict}"]
    return "\n".join(lines) + "\n"


def _iv(v: dict, sign: bool = False) -> str:
    f = "{:+.3f}" if sign else "{:.3f}"
    return f"{f.format(v['value'])} [{f.format(v['low'])}, {f.format(v['high'])}]"


def run_signal(
    model: str,
    paths: str | None = None,
    output: str = "runs/signal",
    k: int = 16,
    folds: int = 5,
    layer: int | None = None,
    protect: tuple[int, ...] | None = None,
    seed: int = 0,
    batch_size: int = 8,
    device: str | None = None,
    dtype: str | None = None,
    tokenizer=None,
    target: Literal["margin", "kl"] = "margin",
    tasks: list[str] | None = None,
    examples_per_task: int = 100,
    continuation_tokens: int = 16,
    threshold: float = 0.1,
) -> dict:
    """Test whether the nearest training prompts predict the best single skip and repeat of an example.

    Args:
        model: the model the paths were searched with (name or folder; or a ``RoutedModel``, then pass
            ``tokenizer``).
        paths: a search output made with ``--sweep true`` (every record needs its single-edit sweep);
            not used with ``target="kl"``.
        output: folder for ``signal.json`` and ``signal.md``.
        k: nearest training prompts averaged per example.
        folds: cross-validation folds over examples.
        layer: the layer whose input represents a prompt (default: the middle one).
        protect: layers never chosen (default: the first two and the last).
        seed: seed of the folds and the shuffled control.
        batch_size: prompts per forward pass.
        device: where the model runs (``load_routed``'s policy).
        dtype: the model's dtype: auto or None keeps the checkpoint's; float32, bfloat16 or float16.
        tokenizer: the tokenizer, when ``model`` is a ``RoutedModel``.
        target: ``margin``: the search sweep's gold margins (needs ``paths``); ``kl``: the KL to the base
            model of every single-layer skip on prompts of ``tasks`` (no gold), with the token-level
            oracle headroom (``drllm.evaluation.kl_signal``).
        tasks: ``kl``: task names with an optional split (default ARC-Easy train, MMLU dev, GSM8K train).
        examples_per_task: ``kl``: prompts per task.
        continuation_tokens: ``kl``: tokens of the base model's greedy continuation per prompt.
        threshold: ``kl``: the next-token KL (nats) under which a token's skip counts as free (headroom).

    Returns:
        The result written to ``signal.json`` (``signal_kl.json`` for ``kl``).
    """
    if target not in ("margin", "kl"):
        raise ValueError(f"target must be margin or kl, got {target!r}")
    _check_target_flags(target, paths, tasks, examples_per_task, continuation_tokens, threshold)
    if target == "kl":
        from .kl_signal import DEFAULT_TASKS, run_kl_signal

        return run_kl_signal(
            model,
            output,
            tasks or DEFAULT_TASKS,
            examples_per_task,
            continuation_tokens,
            k,
            folds,
            layer,
            protect,
            threshold,
            seed,
            batch_size,
            device,
            tokenizer,
            dtype,
        )
    if paths is None:
        raise ValueError("the margin signal test reads a search's sweep: pass --paths (or --target kl)")
    records = read_records(paths)  # checks the file before the model loads
    table = sweep_table(records, paths)
    check_output(output, folder=True)
    routed, tokenizer, name = load_with_tokenizer(model, tokenizer, device, None, "run_signal", dtype)
    for r in records:
        if r.num_layers not in (None, routed.num_layers):
            raise ValueError(
                f"{paths}: record {r.id!r} has {r.num_layers} layers, the model {routed.num_layers}"
            )
    check_searched_with(records, routed, paths)
    features = prompt_features(routed, tokenizer, table.prompts, layer, batch_size)
    result = {"model": name, "paths": str(paths), **signal_test(features, table, k, folds, protect, seed)}
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "signal.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(folder / "signal.md", format_signal(result))
    log.info(format_signal(result))
    return result


def _check_target_flags(target, paths, tasks, examples_per_task, continuation_tokens, threshold) -> None:
    """Refuse, by name, a flag the chosen ``target`` would silently ignore."""
    if target == "kl" and paths is not None:
        raise ValueError(
            "--paths is read by --target margin only; --target kl needs no search (it runs the prompts of "
            "--tasks): drop --paths, or use --target margin"
        )
    if target == "margin":
        kl_only = (
            ("tasks", tasks, None),
            ("examples-per-task", examples_per_task, 100),
            ("continuation-tokens", continuation_tokens, 16),
            ("threshold", threshold, 0.1),
        )
        given = [f"--{flag}" for flag, value, default in kl_only if value != default]
        if given:
            raise ValueError(
                f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} read by --target kl only; "
                "--target margin reads the sweep of --paths: drop them, or add --target kl"
            )
