"""Damped repeats against plain repeats: one layer run twice, its second update scaled by a fitted alpha.

    .venv/bin/python benchmarks/repeats.py --threads 1 --output runs/repeats

For every unprotected layer i of SmolLM2-135M-Instruct, the path that runs layer i twice (31 layer
applications) is scored three ways on ARC-Easy validation (option log-likelihood, the prompt style ``drllm
eval`` picks): the base model, the plain repeat (alpha = 1) and the damped repeat, whose alpha is the
grid value (0, .25, .5, .75, 1) of lowest LM loss on ``--calibration`` ARC-Easy training prompts
(``fit_repeat_scales``; alpha = 0 is the base path). Also the LM loss of the validation prompts' text under
each path. Accuracy differences are paired bootstrap 95% intervals over the same questions; results are
saved after every layer and a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from kl_levels import paired

from drllm.router import load_routed, load_tokenizer
from drllm.search.evaluator import PathEvaluator
from drllm.search.stand_ins import _lm_loss, fit_repeat_scales
from drllm.search.tasks import get_task
from drllm.search.tasks.style import resolve_style


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calibration", type=int, default=64, help="ARC-Easy train prompts for alpha")
    ap.add_argument("--limit", type=int, default=None, help="validation questions (default: all 570)")
    ap.add_argument("--layers", default=None, help="layers to repeat (default: every unprotected one)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--output", default="runs/repeats")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    routed = load_routed("smollm2-135m-instruct", device="cpu")
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    L = routed.num_layers
    layers = [int(v) for v in args.layers.split(",")] if args.layers else list(range(2, L - 1))
    task = get_task("arc_easy")
    style, _ = resolve_style("auto", routed, tokenizer, task)
    ev = PathEvaluator(routed, tokenizer, task, None, style, max_rows=args.batch_size)
    calib = ev.usable(task.load("train", limit=args.calibration))
    examples = ev.usable(task.load("validation", limit=args.limit))
    calib_prompts = [ev.prompt_text(ex) for ex in calib]
    val_prompts = [ev.prompt_text(ex) for ex in examples]
    saved = out / "results.json"
    results = json.loads(saved.read_text()) if saved.exists() else {"layers": {}}
    base_path = (1,) * L
    if "base" not in results:
        correct = [float(o.reward >= 1.0) for o in _outcomes(ev, examples, base_path, args.batch_size)]
        loss = _lm_loss(routed, tokenizer, val_prompts, torch.tensor(base_path), args.batch_size)
        results["base"] = {"correct": correct, "val_lm_loss": loss, "style": style, "n": len(examples)}
    base = results["base"]["correct"]
    for i in layers:
        if str(i) in results["layers"]:
            continue
        path = tuple(2 if k == i else 1 for k in range(L))
        scales = fit_repeat_scales(routed, tokenizer, calib_prompts, path, batch_size=args.batch_size)
        alpha = float(scales.repeat_scale[i])
        row = {"alpha": alpha, "calibration_lm_loss": scales.info["repeat_fit"]["lm_loss"][str(i)]}
        for name, stand_ins in (("plain", None), ("damped", scales)):
            routed.set_stand_ins(stand_ins)
            try:
                correct = [float(o.reward >= 1.0) for o in _outcomes(ev, examples, path, args.batch_size)]
                loss = _lm_loss(routed, tokenizer, val_prompts, torch.tensor(path), args.batch_size)
            finally:
                routed.set_stand_ins(None)
            row[name] = {"correct": correct, "accuracy": float(np.mean(correct)), "val_lm_loss": loss}
            row[name]["minus_base"] = paired(correct, base)
        row["damped_minus_plain"] = paired(row["damped"]["correct"], row["plain"]["correct"])
        results["layers"][str(i)] = row
        saved.write_text(json.dumps(results))
        print(
            f"layer {i:2d}: alpha {alpha:.2f}  plain {100 * row['plain']['accuracy']:.1f}%  "
            f"damped {100 * row['damped']['accuracy']:.1f}%  (base {100 * np.mean(base):.1f}%)  "
            f"LM loss plain {row['plain']['val_lm_loss']:.3f} damped {row['damped']['val_lm_loss']:.3f} "
            f"base {results['base']['val_lm_loss']:.3f}",
            flush=True,
        )
    summarise(results)


def _outcomes(ev, examples, path, batch_size):
    """Outcomes of one path on every example, prepared in chunks (the recorded prefixes stay small)."""
    outcomes = []
    for start in range(0, len(examples), 4 * batch_size):
        prepared = ev.prepare(examples[start : start + 4 * batch_size], start)
        outcomes += ev.outcomes([(p, path) for p in prepared])
        for p in prepared:
            ev.release(p)
    return outcomes


def summarise(results):
    rows = results["layers"]
    base = results["base"]["correct"]
    lines = [f"base: {100 * np.mean(base):.1f}% on {len(base)} questions"]
    for name in ("plain", "damped"):
        worse = sum(r[name]["minus_base"][2] < 0 for r in rows.values())
        better = sum(r[name]["minus_base"][1] > 0 for r in rows.values())
        mean = np.mean([r[name]["minus_base"][0] for r in rows.values()])
        lines.append(
            f"{name}: mean change against base {100 * mean:+.2f} points over {len(rows)} layers; "
            f"significantly worse at {worse}, better at {better}"
        )
    better = sum(r["damped_minus_plain"][1] > 0 for r in rows.values())
    worse = sum(r["damped_minus_plain"][2] < 0 for r in rows.values())
    lines.append(f"damped - plain: significantly better at {better} layers, worse at {worse}")
    lines.append("alphas: " + ", ".join(f"{i}:{r['alpha']:g}" for i, r in rows.items()))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
