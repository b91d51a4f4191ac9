"""Sublayer units against whole blocks at matched multiply-adds, paired on the same prompts.

    .venv/bin/python benchmarks/units.py --saved 0.1,0.2 --output runs/units

Per compute target (the share of the decoder stack's multiply-adds saved): the block-influence and angular
block paths with that many blocks dropped, the unit-drop path (attentions and MLPs by least influence per
multiply-add, LLM-Drop's criterion on each unit), the attention-drop and the mlp-drop paths, all from the
same calibration prompts (training splits). Every method is scored on the validation prompts of
``kl_levels.py`` (mean KL to the base model over the teacher-forced continuation, top-1 agreement, greedy
fidelity); unit paths are compared with the better block path, paired bootstrap 95% intervals.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from kl_levels import VAL_TASKS, paired, score_many, setup

from drllm.router import path_macs
from drllm.search.closeness import heuristic_paths
from drllm.search.heuristics import calibration_statistics
from drllm.search.teacher import build_teacher, task_prompts
from drllm.search.unit_heuristics import attention_drop_path, mlp_drop_path, unit_drop_path, unit_influence
from drllm.search.unit_stand_ins import fit_path_stand_ins


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--saved", default="0.1,0.2", help="shares of the stack's multiply-adds to save")
    ap.add_argument("--val-per-task", type=int, default=100)
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--teacher", default="runs/kl_levels")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--output", default="runs/units")
    ap.add_argument("--stand-ins", action="store_true", help="also every path with its linear stand-ins")
    ap.add_argument("--rank", type=int, default=64, help="stand-in rank (0: full)")
    args = ap.parse_args()
    out = Path(args.output)
    routed, tokenizer, pad, fixed = setup(args, out)
    L, bs = routed.num_layers, args.batch_size
    val = build_teacher(
        routed, tokenizer, task_prompts(VAL_TASKS, tokenizer, limit=args.val_per_task),
        Path(args.teacher) / "teacher-val", 16, 16,
    )  # fmt: skip
    pool = task_prompts(["arc_easy", "mmlu:dev", "gsm8k"], tokenizer, limit=360)
    random.Random(0).shuffle(pool)
    calib = [p.text for p in pool[: args.calibration]]
    stats = calibration_statistics(routed, tokenizer, calib, bs)
    influence = unit_influence(routed, tokenizer, calib, bs)
    tokens = int(round(np.mean([len(r["prompt_ids"]) for r in val])))
    results = {
        "validation_prompts": len(val),
        "calibration_prompts": len(calib),
        "influence": {k: v.tolist() for k, v in influence.items()},
        "targets": {},
    }
    for saved in [float(v) for v in args.saved.split(",")]:
        level = L - int(round(saved * L))
        methods = {name: (path, None) for name, path in heuristic_paths(stats, L, level, fixed).items()}
        methods["unit-drop"] = (unit_drop_path(influence, routed.config, saved, tokens), None)
        for name, drop in (("attention-drop", attention_drop_path), ("mlp-drop", mlp_drop_path)):
            try:
                methods[name] = (drop(influence, routed.config, saved, tokens), None)
            except ValueError as err:
                print(f"{name} at {saved:.0%}: {err}")
        if args.stand_ins:  # each path beside itself with linear stand-ins (units' maps, then blocks')
            for name, (path, _) in list(methods.items()):
                maps = fit_path_stand_ins(routed, tokenizer, calib, path, args.rank or None, bs)
                methods[f"{name}+linear"] = (path, None, maps)
        scores = score_many(routed, val, pad, bs, methods, fixed)
        row = {
            m: {
                **{k: float(np.mean(scores[m][k])) for k in ("kl", "agreement", "fidelity")},
                "macs_saved": 1 - path_macs(routed.config, p, tokens, *rest[1:])["fraction"],
                "path": list(p),
            }
            for m, (p, *rest) in methods.items()
        }
        compare = {}
        for suffix in ("", "+linear") if args.stand_ins else ("",):
            best = min((b + suffix for b in ("block-influence", "angular")), key=lambda m: row[m]["kl"])
            for m in ("unit-drop", "attention-drop", "mlp-drop"):
                if m + suffix in scores:
                    compare[f"{m}{suffix} - {best}"] = {
                        k: paired(scores[m + suffix][k], scores[best][k])
                        for k in ("kl", "agreement", "fidelity")
                    }
        for m in [m for m in methods if m.endswith("+linear")]:  # what the maps change, path by path
            plain = m.removesuffix("+linear")
            compare[f"{m} - {plain}"] = {
                k: paired(scores[m][k], scores[plain][k]) for k in ("kl", "fidelity")
            }
        results["targets"][str(saved)] = {
            "level": level,
            "best_block": min(("block-influence", "angular"), key=lambda m: row[m]["kl"]),
            "methods": row,
            "paired": compare,
        }
        (out / "results.json").write_text(json.dumps(results, indent=2))
        print(json.dumps(results["targets"][str(saved)], indent=1), flush=True)


if __name__ == "__main__":
    main()
