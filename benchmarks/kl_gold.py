"""The learned static path with the task loss (``--gold-weight``) against the one trained on KL alone, paired.

    .venv/bin/python benchmarks/kl_gold.py --levels 27 --gold-weight 1 --threads 1
    .venv/bin/python benchmarks/kl_gold.py --gold-weight 1 --epochs 2 --reward-baseline per-prompt \
        --start-margin 1 --teacher runs/kl_v2 --per-example-27 runs/kl_v2/per_example-27.json

Per level, ``train_kl`` fits the ``static`` path exactly as ``kl_levels.py`` did for its learned static
path (the same 954 training prompts and teacher continuations, start, seed, one epoch, lr 0.05), adding
``gold_weight`` times the gold option's cross-entropy on the prompts with answer options (ARC-Easy train,
MMLU dev). The deployed path is then scored on the 600 mixed validation prompts (KL to the base model) and
on ARC-Easy validation (570 questions, option log-likelihood), and paired per prompt and per question with
the methods saved by the KL experiments: learned static without gold, angular, block influence (KL:
``--per-example``; accuracy: ``drllm eval``'s ``examples.jsonl`` under ``--eval``, whose base rows are
checked against this script's own scoring) and the greedy-KL path (``kl_greedy_arc.py``'s results).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from kl_greedy_arc import _correct, _eval_rows
from kl_levels import paired, score, setup, teacher_rows

from drllm.search.evaluator import PathEvaluator
from drllm.search.tasks import get_task
from drllm.search.tasks.style import resolve_style
from drllm.train.kl_run import train_kl


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="27")
    ap.add_argument("--gold-weight", type=float, default=1.0)
    ap.add_argument("--teacher", default="runs/kl_levels")
    ap.add_argument("--per-example", default="runs/kl_static_levels/per_example-{level}.json")
    ap.add_argument("--per-example-27", default="runs/kl_levels/per_example-27-600-session2.json")
    ap.add_argument("--eval", default="runs/eval_learned/{level}/examples.jsonl")
    ap.add_argument("--greedy", default="runs/kl_greedy/arc_easy.json")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--output", default="runs/kl_gold")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--reward-baseline", default="running-mean", help="running-mean or per-prompt")
    ap.add_argument("--start-margin", type=float, default=2.0)
    args = ap.parse_args()
    out = Path(args.output)
    routed, tokenizer, pad, fixed = setup(args, out)
    val, _, _ = teacher_rows(routed, tokenizer, Path(args.teacher), 360, 200)
    task = get_task("arc_easy")
    style, _ = resolve_style("auto", routed, tokenizer, task)
    ev = PathEvaluator(routed, tokenizer, task, None, style, max_rows=16)
    examples = ev.usable(task.load("validation"))
    ids = [str(ex.id) for ex in examples]
    greedy = json.loads(Path(args.greedy).read_text()) if Path(args.greedy).exists() else {}
    saved = out / "results.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    for level in [int(v) for v in args.levels.split(",")]:
        key = f"{level}-w{args.gold_weight:g}"
        if (args.epochs, args.reward_baseline, args.start_margin) != (1, "running-mean", 2.0):
            key += f"-e{args.epochs}-{args.reward_baseline}-m{args.start_margin:g}"
        if key in results:
            continue
        folder = out / f"static-{key}"
        metrics = train_kl(
            routed, str(folder), level, router="static", examples_per_task=360,
            teacher_dir=str(Path(args.teacher) / "teacher"), epochs=args.epochs, batch_size=args.batch_size,
            lr=0.05, tokenizer=tokenizer, val_fraction=0.05, gold_weight=args.gold_weight,
            baseline=args.reward_baseline, start_margin=args.start_margin,
        )  # fmt: skip
        routed.load_routers(folder)
        path = routed.route(torch.tensor([val[0]["prompt_ids"]]))[0].tolist()
        routed.routers = None
        kl = score(routed, val, pad, args.batch_size, path=path, fixed=fixed)["kl"]
        correct = _correct(ev, examples, tuple(path), 16)
        scores = {"path": path, "kl": kl, "correct": correct}
        saved.with_name(f"scores-{key}.json").write_text(json.dumps(scores))  # kept if a comparison fails
        known = args.per_example_27 if level == 27 else args.per_example.format(level=level)
        others = json.loads(Path(known).read_text())
        methods = _eval_rows(Path(args.eval.format(level=level)))
        if str(level) in greedy:
            methods["greedy-kl"] = dict(zip(ids, greedy[str(level)]["correct"], strict=True))
        if "base" not in results:
            results["base"] = _correct(ev, examples, (1,) * routed.num_layers, 16)
        base = results["base"]
        matching = float(np.mean([methods["base"][i] == c for i, c in zip(ids, base, strict=True)]))
        entry = {
            "path": path,
            "layers": sum(path),
            "val_kl": float(np.mean(kl)),
            "arc_easy": float(np.mean(correct)),
            "train_metrics": {k: v for k, v in metrics.items() if k != "history"},
            "base_rows_matching_eval": matching,
            "paired_kl": {f"gold - {m}": paired(kl, v["kl"]) for m, v in others.items()},
            "paired_arc_easy": {
                f"gold - {m}": paired(correct, [per_id[i] for i in ids]) for m, per_id in methods.items()
            },
            "kl": kl,
            "correct": correct,
        }
        results[key] = entry
        saved.write_text(json.dumps(results))
        print(key, json.dumps({k: v for k, v in entry.items() if k not in ("kl", "correct")}), flush=True)


if __name__ == "__main__":
    main()
