"""Sublayer units against whole blocks, both learned on the dense objective, paired at the same compute.

    .venv/bin/python benchmarks/kl_units.py --compute 0.9,0.8 --threads 1 --output runs/kl_units

The prompts of ``kl_levels.py`` (its teacher folders are reused when ``--teacher`` points at them). Per
compute share f: the heuristic block paths at round(f L) layers (block influence, angular), the heuristic
unit paths (``unit-drop``, ``attention-drop``: LLM-Drop's criterion, saving at least 1 - f), and two paths
trained by ``fit_static_path`` identically (same rows, steps, seed, learning rate and start: the better
heuristic block path on 64 training prompts) but for the action set: blocks only, or blocks and units.
Every method is scored on every validation prompt (mean KL to the base model over the teacher-forced
continuation, top-1 agreement, greedy fidelity); differences are paired bootstrap 95% intervals. Trained
paths are saved as they finish, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from kl_levels import paired, score_many, setup, teacher_rows

from drllm.router import path_macs
from drllm.search.closeness import heuristic_paths, path_kl
from drllm.search.heuristics import calibration_statistics
from drllm.search.unit_heuristics import attention_drop_path, unit_drop_path, unit_influence
from drllm.train.static_path import BLOCK_ACTIONS, UNIT_ACTIONS, PathSettings, fit_static_path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compute", default="0.9,0.8")
    ap.add_argument("--per-task", type=int, default=360)
    ap.add_argument("--val-per-task", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--start-margin", type=float, default=2.0, help="logit margin of the start path")
    ap.add_argument("--teacher", default="runs/kl_static_levels")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--output", default="runs/kl_units")
    args = ap.parse_args()
    out = Path(args.output)
    routed, tokenizer, pad, fixed = setup(args, out)
    L, bs = routed.num_layers, args.batch_size
    val, train, calib = teacher_rows(routed, tokenizer, Path(args.teacher), args.per_task, args.val_per_task)
    calib_text = [r["prompt"] for r in calib]
    stats = calibration_statistics(routed, tokenizer, calib_text, bs)
    influence = unit_influence(routed, tokenizer, calib_text, bs)
    tokens = round(np.mean([len(r["prompt_ids"]) for r in train]))
    saved_paths = out / "paths.json"
    learned = json.loads(saved_paths.read_text()) if saved_paths.exists() else {}
    results = {"validation_prompts": len(val), "training_prompts": len(train), "shares": {}}
    if (out / "results.json").exists():  # shares of earlier runs stay
        results["shares"] = json.loads((out / "results.json").read_text()).get("shares", {})
    for share in [float(v) for v in args.compute.split(",")]:
        level = round(share * L)
        paths = dict(heuristic_paths(stats, L, level, fixed))
        start_name = min(paths, key=lambda n: np.mean(path_kl(routed, calib, paths[n], bs, pad)))
        paths["unit-drop"] = tuple(unit_drop_path(influence, routed.config, 1 - share, tokens))
        paths["attention-drop"] = tuple(attention_drop_path(influence, routed.config, 1 - share, tokens))
        for name, actions in (("learned-blocks", BLOCK_ACTIONS), ("learned-units", UNIT_ACTIONS)):
            key = f"{name}@{share:g}"
            if key not in learned:
                settings = PathSettings(share, actions, args.epochs, bs, start_margin=args.start_margin)
                path, history = fit_static_path(routed, train, [], settings, pad, paths[start_name])
                learned[key] = {"path": path, "history": history, "start": start_name, **settings.identity()}
                saved_paths.write_text(json.dumps(learned, indent=1))
                print(f"{key}: {path} ({history[-1]})", flush=True)
            paths[name] = tuple(learned[key]["path"])
        methods = score_many(routed, val, pad, bs, {n: (p, None) for n, p in paths.items()}, fixed)
        val_tokens = round(np.mean([len(r["prompt_ids"]) for r in val]))
        row = {
            n: {
                "kl": float(np.mean(v["kl"])),
                "agreement": float(np.mean(v["agreement"])),
                "fidelity": float(np.mean(v["fidelity"])),
                "compute": path_macs(routed.config, paths[n], val_tokens)["fraction"],
                "path": list(paths[n]),
            }
            for n, v in methods.items()
        }
        block = min(("block-influence", "angular"), key=lambda n: row[n]["kl"])
        unit = min(("unit-drop", "attention-drop"), key=lambda n: row[n]["kl"])
        kl = {n: v["kl"] for n, v in methods.items()}
        results["shares"][f"{share:g}"] = {
            "level": level,
            "start": start_name,
            "methods": row,
            "paired_kl": {
                "learned-units - learned-blocks": paired(kl["learned-units"], kl["learned-blocks"]),
                f"learned-blocks - {block}": paired(kl["learned-blocks"], kl[block]),
                f"{unit} - {block}": paired(kl[unit], kl[block]),
                f"learned-units - {unit}": paired(kl["learned-units"], kl[unit]),
            },
        }
        (out / "results.json").write_text(json.dumps(results, indent=2))
        print(json.dumps(results["shares"][f"{share:g}"], indent=1), flush=True)


if __name__ == "__main__":
    main()
