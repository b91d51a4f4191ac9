"""Linear stand-ins and damped repeats against plain skips and repeats, paired on the same prompts.

    .venv/bin/python benchmarks/stand_ins.py --levels 27,24 --output runs/stand_ins

Uses the prompts of ``kl_levels.py`` (its teacher folders are reused when ``--teacher`` points at them).
Per level, for the block-influence and angular paths and the learned static path (when ``kl_levels`` trained
one under ``--kl-runs``): the plain path, the path with full-rank linear stand-ins and with rank-64 ones,
fitted on ``--calibration`` training prompts (never validation ones). Every method is scored on every
validation prompt: mean KL to the base model over the teacher-forced continuation, top-1 agreement and
greedy fidelity (continuation tokens reproduced before the first disagreement). Differences are paired
bootstrap 95% intervals. One model process; ``--threads 1`` when the cores are shared.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
from kl_levels import VAL_TASKS, paired, score_many, setup

from drllm.router import path_macs
from drllm.search.closeness import heuristic_paths
from drllm.search.heuristics import calibration_statistics
from drllm.search.stand_ins import fit_linear_stand_ins
from drllm.search.teacher import build_teacher, task_prompts


def learned_static_path(routed, folder: Path, tokenizer):
    """The deployed path of a learned static router (the same for every prompt)."""
    from drllm.router import batch_prompts

    routed.load_routers(folder)
    ids, mask = batch_prompts(tokenizer, ["any prompt"], routed.device)
    path = tuple(routed.route(ids, mask)[0].tolist())
    routed.routers = None
    routed._state.routers = None
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="27,24")
    ap.add_argument("--val-per-task", type=int, default=200)
    ap.add_argument("--per-task", type=int, default=360, help="training prompts per task (the pool)")
    ap.add_argument("--calibration", type=int, default=128, help="training prompts the maps are fitted on")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--teacher", default="runs/kl_levels", help="folder with kl_levels' teacher folders")
    ap.add_argument("--kl-runs", default="runs/kl_levels", help="folder with kl_levels' static-<level> runs")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--output", default="runs/stand_ins")
    args = ap.parse_args()
    out = Path(args.output)
    routed, tokenizer, pad, fixed = setup(args, out)
    L, bs = routed.num_layers, args.batch_size
    val_prompts = task_prompts(VAL_TASKS, tokenizer, limit=args.val_per_task)
    val = build_teacher(routed, tokenizer, val_prompts, Path(args.teacher) / "teacher-val", 16, 16)
    train_prompts = task_prompts(["arc_easy", "mmlu:dev", "gsm8k"], tokenizer, limit=args.per_task)
    train = build_teacher(routed, tokenizer, train_prompts, Path(args.teacher) / "teacher", 16, 16)
    shuffled = list(train)
    random.Random(0).shuffle(shuffled)
    calib = [r["prompt"] for r in shuffled[: args.calibration]]
    stats = calibration_statistics(routed, tokenizer, calib[:64], bs)  # kl_levels' calibration prompts
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"levels": {}}
    results.update(validation_prompts=len(val), calibration_prompts=len(calib))
    for level in [int(v) for v in args.levels.split(",")]:
        paths = heuristic_paths(stats, L, level, fixed)
        static = Path(args.kl_runs) / f"static-{level}"
        if (static / "metrics.json").exists():
            paths["learned-static"] = learned_static_path(routed, static, tokenizer)
        methods, fits = {}, {}
        for name, path in paths.items():
            methods[name] = (path, None)
            for rank in (None, args.rank):
                began = time.perf_counter()
                stand_ins = fit_linear_stand_ins(routed, tokenizer, calib, path, rank=rank, batch_size=bs)
                label = f"{name}+linear" + (f"-r{rank}" if rank else "")
                fits[label] = round(time.perf_counter() - began, 1)
                methods[label] = (path, None, stand_ins)
        scores = score_many(routed, val, pad, bs, methods, fixed)
        row = {
            m: {k: float(np.mean(v[k])) for k in ("kl", "agreement", "fidelity", "layers")}
            for m, v in scores.items()
        }
        tokens = int(round(np.mean([len(r["prompt_ids"]) for r in val])))
        for m, (path, _, *stand_ins) in methods.items():  # multiply-adds per prompt token, of the full model
            row[m]["macs_fraction"] = path_macs(routed.config, path, tokens, *stand_ins)["fraction"]
        compare = {}
        for name in paths:
            for label in (f"{name}+linear", f"{name}+linear-r{args.rank}"):
                compare[f"{label} - {name}"] = {
                    k: paired(scores[label][k], scores[name][k]) for k in ("kl", "agreement", "fidelity")
                }
        results["levels"][str(level)] = {
            "paths": {k: list(v) for k, v in paths.items()},
            "methods": row,
            "paired": compare,
            "fit_seconds": fits,
        }
        results_path.write_text(json.dumps(results, indent=2))
        (out / f"per_example-{level}.json").write_text(json.dumps(scores))
        print(json.dumps(results["levels"][str(level)], indent=1), flush=True)


if __name__ == "__main__":
    main()
