"""``drllm signal --target kl``: does the prompt predict which layer it can lose, by KL to the base model?

For prompts of several tasks (no gold needed), each with the base model's greedy continuation
(``drllm.search.teacher``), every single-layer skip is scored by its mean KL(base || skipped) over the
teacher-forced continuation: a matrix ``K [prompts, layers]`` (protected layers never chosen). Then, with
cross-validated folds over prompts (as in ``drllm.evaluation.signal``):

- ``knn``: skip the layer of least mean KL among the ``k`` training prompts nearest in the prompt's features
  (mean hidden state entering ``layer``, first token left out);
- ``static``: skip the one layer of least mean KL on the training folds;
- ``knn-shuffled``: knn with the features shuffled (no per-prompt information);
- ``oracle``: each prompt's own best layer (an upper bound, not a method).

Reported pooled (one static layer for every task) and per task (the static layer chosen within the task),
with bootstrap intervals and paired differences. Lower KL is better; knn claims per-input signal only when its
KL is below both static and knn-shuffled with the paired 95% interval below zero.

Token-level oracle headroom: the share of (continuation token, layer) pairs whose single skip keeps that
token's next-token KL under ``threshold`` (default 0.1 nats), and the share of tokens for which some layer can
be skipped that way. Large headroom with no prompt-level signal is the case for token-level routing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from drllm.router.auto import load_with_tokenizer
from drllm.search import progress
from drllm.search.closeness import batch_tensors, teacher_log_probs
from drllm.search.records import check_output
from drllm.search.teacher import build_teacher, task_prompts

from .report import atomic_write_text
from .signal import _allowed, _choices, _iv, check_neighbours, prompt_features
from .stats import bootstrap_interval, paired_difference

PREDICTORS = ("knn", "static", "knn-shuffled", "oracle")
DEFAULT_TASKS = ("arc_easy", "mmlu:dev", "gsm8k")


@torch.no_grad()
def skip_kl_matrix(routed, rows: list[dict], allowed, pad_id: int, batch_size: int, threshold: float):
    """``K [n, L]`` mean KL of each single-layer skip (inf where not allowed) and token-level counts."""
    L = routed.num_layers
    K = np.full((len(rows), L), np.inf)
    under = np.zeros(L)  # tokens whose skip of layer l keeps KL < threshold
    any_under, tokens = 0, 0
    bar = progress.bar(len(rows), "single-layer skips", "prompt")
    for start in range(0, len(rows), batch_size):
        batch = batch_tensors(rows[start : start + batch_size], pad_id, routed.device)
        teacher = teacher_log_probs(routed, batch)
        target = batch["target"].bool()
        owner = target.nonzero()[:, 0].cpu().numpy()
        ok_any = np.zeros(len(owner), dtype=bool)
        for layer in np.flatnonzero(allowed):
            path = torch.ones(L, dtype=torch.long)
            path[layer] = 0
            hidden = routed.backbone(batch["ids"], batch["attention"], path)
            student = F.log_softmax(routed.lm_logits(hidden[target]).float(), -1)
            kl = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1).cpu().numpy()
            for b in range(target.shape[0]):
                K[start + b, layer] = kl[owner == b].mean()
            under[layer] += (kl < threshold).sum()
            ok_any |= kl < threshold
        any_under += int(ok_any.sum())
        tokens += len(owner)
        bar.update(target.shape[0])
    bar.close()
    return K, {
        "threshold": threshold,
        "tokens": tokens,
        "pair_share": float(under[allowed].sum() / max(1, tokens * int(allowed.sum()))),
        "token_share_some_layer": any_under / max(1, tokens),
        "per_layer_share": [
            float(u / max(1, tokens)) if a else None for u, a in zip(under, allowed, strict=True)
        ],
    }


def kl_signal_test(features, K, allowed, k: int, folds: int, seed: int) -> dict:
    """Each predictor's KL with intervals and knn's paired differences against static and knn-shuffled."""
    n = len(K)
    chosen = _choices(features, -K, allowed, k, folds, seed)
    rows = np.arange(n)
    kl = {p: K[rows, chosen[p]] for p in PREDICTORS}
    out = {"prompts": n, "predictors": {}}
    for p in PREDICTORS:
        out["predictors"][p] = {
            "kl": bootstrap_interval(kl[p]).as_dict(),
            "distinct_layers": int(len(set(chosen[p].tolist()))),
            "most_chosen_layer": int(np.bincount(chosen[p], minlength=K.shape[1]).argmax()),
        }
    for other in ("static", "knn-shuffled"):
        out[f"knn_vs_{other}"] = paired_difference(kl["knn"], kl[other]).as_dict()
    out["signal"] = all(out[f"knn_vs_{o}"]["high"] < 0 for o in ("static", "knn-shuffled"))
    return out


def run_kl_signal(
    model,
    output: str,
    tasks=DEFAULT_TASKS,
    examples_per_task: int = 100,
    continuation_tokens: int = 16,
    k: int = 16,
    folds: int = 5,
    layer: int | None = None,
    protect: tuple[int, ...] | None = None,
    threshold: float = 0.1,
    seed: int = 0,
    batch_size: int = 8,
    device: str | None = None,
    tokenizer=None,
    dtype: str | None = None,
) -> dict:
    """The KL signal test and the token-level headroom; writes ``signal_kl.json`` and ``signal_kl.md``."""
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0 nats, got {threshold!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a whole number >= 1, got {k!r}")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be a whole number >= 2, got {folds!r}")
    check_output(output, folder=True)
    routed, tokenizer, name = load_with_tokenizer(model, tokenizer, device, None, "run_signal", dtype)
    L = routed.num_layers
    allowed = _allowed(L, (0, 1, L - 1) if protect is None else tuple(protect))
    prompts = task_prompts(list(tasks), tokenizer, limit=examples_per_task)
    rows = build_teacher(
        routed, tokenizer, prompts, Path(output) / "teacher", continuation_tokens, batch_size
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    check_neighbours(k, folds, len(rows))
    K, headroom = skip_kl_matrix(routed, rows, allowed, pad, batch_size, threshold)
    features = prompt_features(routed, tokenizer, [r["prompt"] for r in rows], layer, batch_size)
    result = {
        "model": name,
        "tasks": list(tasks),
        "k": k,
        "folds": folds,
        "protected": [int(i) for i in np.flatnonzero(~allowed)],
        "pooled": kl_signal_test(features, K, allowed, k, folds, seed),
        "per_task": {},
        "too_few_for_per_task": {},
        "headroom": headroom,
    }
    task_of = np.array([r["task"] for r in rows])
    for task in dict.fromkeys(task_of.tolist()):
        idx = np.flatnonzero(task_of == task)
        try:
            check_neighbours(k, folds, len(idx))
        except ValueError as err:  # said in the report, not a failure of the pooled test
            result["too_few_for_per_task"][task] = str(err)
            continue
        result["per_task"][task] = kl_signal_test(features[idx], K[idx], allowed, k, folds, seed)
    Path(output).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(output) / "signal_kl.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(Path(output) / "signal_kl.md", format_kl_signal(result))
    return result


def format_kl_signal(result: dict) -> str:
    """The result in Markdown: one table per pool, the headroom and a verdict in words."""
    lines = [
        f"# Per-input signal on the dense target: {result['model']}, tasks {', '.join(result['tasks'])}",
        "",
        f"Mean KL(base || one layer skipped) over the base model's greedy continuation, in nats (lower is "
        f"better); {result['folds']}-fold cross-validation, k = {result['k']}, protected layers "
        f"{result['protected']}; 95% bootstrap intervals.",
    ]
    for label, entry in [("pooled", result["pooled"]), *result["per_task"].items()]:
        lines += [
            "",
            f"## {label} ({entry['prompts']} prompts)",
            "",
            "| predictor | KL | distinct layers | most chosen |",
        ]
        lines += ["|---|---:|---:|---:|"]
        for p, v in entry["predictors"].items():
            lines.append(f"| {p} | {_iv(v['kl'])} | {v['distinct_layers']} | {v['most_chosen_layer']} |")
        lines += [
            "",
            f"- knn - static: {_iv(entry['knn_vs_static'], sign=True)}; knn - knn-shuffled: "
            f"{_iv(entry['knn_vs_knn-shuffled'], sign=True)}.",
            "- Verdict: "
            + (
                "the prompt predicts which layer it can lose (knn below both controls)."
                if entry["signal"]
                else "no per-input signal shown (knn is not below both static and its shuffled control)."
            ),
        ]
    for task, why in result.get("too_few_for_per_task", {}).items():
        lines += ["", f"- No test for {task} alone: {why}."]
    h = result["headroom"]
    lines += [
        "",
        "## Token-level oracle headroom",
        "",
        f"Of {h['tokens']} continuation tokens: {100 * h['pair_share']:.1f}% of (token, layer) pairs keep "
        f"the next-token KL under {h['threshold']} nats when that one layer is skipped; for "
        f"{100 * h['token_share_some_layer']:.1f}% of tokens some layer can be skipped that way.",
    ]
    return "\n".join(lines) + "\n"
