"""ARC-Easy accuracy of the greedy-KL static paths, paired with the methods ``drllm eval`` scored.

    .venv/bin/python benchmarks/kl_greedy_arc.py --threads 1

Reads each level's greedy path from ``kl_greedy.py``'s results and scores it on ARC-Easy validation (option
log-likelihood, the prompt style ``drllm eval`` picks). The base path is scored the same way and checked,
question by question, against the base rows of the eval folder (``--eval``: ``runs/eval_learned/<level>``,
written by ``drllm eval --learned-static``), so the pairing below compares like with like. Each other method
of that folder (learned static, angular, block influence) is then paired with the greedy path over the same
questions: accuracy difference with a paired bootstrap 95% interval. Results are saved per level.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from kl_levels import paired
from repeats import _outcomes

from drllm.router import load_routed, load_tokenizer
from drllm.search.evaluator import PathEvaluator
from drllm.search.tasks import get_task
from drllm.search.tasks.style import resolve_style


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--greedy", default="runs/kl_greedy/results.json")
    ap.add_argument("--eval", default="runs/eval_learned/{level}/examples.jsonl")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--output", default="runs/kl_greedy/arc_easy.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    greedy = json.loads(Path(args.greedy).read_text())
    routed = load_routed("smollm2-135m-instruct", device="cpu")
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    task = get_task("arc_easy")
    style, _ = resolve_style("auto", routed, tokenizer, task)
    ev = PathEvaluator(routed, tokenizer, task, None, style, max_rows=args.batch_size)
    examples = ev.usable(task.load("validation"))
    ids = [str(ex.id) for ex in examples]
    out = Path(args.output)
    results = json.loads(out.read_text()) if out.exists() else {}
    if "base" not in results:
        results["base"] = _correct(ev, examples, (1,) * routed.num_layers, args.batch_size)
    for level, row in greedy.items():
        if level in results:
            continue
        correct = _correct(ev, examples, tuple(row["path"]), args.batch_size)
        methods = _eval_rows(Path(args.eval.format(level=level.split("-")[0])))  # "27-x": another path at 27
        base_match = np.mean([methods["base"][i] == c for i, c in zip(ids, results["base"], strict=True)])
        entry = {"path": row["path"], "accuracy": float(np.mean(correct)), "correct": correct}
        entry["base_rows_matching_eval"] = float(base_match)
        entry["paired"] = {
            f"{name} - greedy-kl": paired([per_id[i] for i in ids], correct)
            for name, per_id in methods.items()
            if name != "base"
        }
        entry["accuracies"] = {n: float(np.mean([per_id[i] for i in ids])) for n, per_id in methods.items()}
        results[level] = entry
        out.write_text(json.dumps(results))
        shown = {k: v for k, v in entry.items() if k != "correct"}
        print(level, json.dumps(shown), flush=True)


def _correct(ev, examples, path, batch_size) -> list[float]:
    return [float(o.reward >= 1.0) for o in _outcomes(ev, examples, path, batch_size)]


def _eval_rows(path: Path) -> dict[str, dict[str, float]]:
    """Per method, per question id: 1.0 when ``drllm eval`` scored it correct."""
    methods: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        methods.setdefault(row["method"], {})[str(row["id"])] = float(row["correct"])
    return methods


if __name__ == "__main__":
    main()
