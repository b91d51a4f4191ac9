"""The greedy static path on the dense objective against the learned static path, paired per level.

    .venv/bin/python benchmarks/kl_greedy.py --levels 29,27,26,24 --threads 1 --output runs/kl_greedy

``greedy_kl_path`` skips, one layer at a time, the layer whose skip least raises the mean KL on the 64
calibration prompts ``kl_levels.py`` uses (its training pool, shuffled with seed 0). Each greedy path is
scored on the same 600 validation prompts, and compared, paired, with the methods ``kl_levels.py`` saved
per example for that level (``--per-example`` files: learned static, angular, block influence).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from kl_levels import paired, score_many, setup, teacher_rows

from drllm.search.closeness import greedy_kl_path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="29,27,26,24")
    ap.add_argument("--per-task", type=int, default=360)
    ap.add_argument("--val-per-task", type=int, default=200)
    ap.add_argument("--teacher", default="runs/kl_static_levels")
    ap.add_argument("--per-example", default="runs/kl_static_levels/per_example-{level}.json")
    ap.add_argument("--per-example-27", default="runs/kl_levels/per_example-27-600-session2.json")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--output", default="runs/kl_greedy")
    args = ap.parse_args()
    out = Path(args.output)
    routed, tokenizer, pad, fixed = setup(args, out)
    val, train, calib = teacher_rows(routed, tokenizer, Path(args.teacher), args.per_task, args.val_per_task)
    saved = out / "results.json"
    results = json.loads(saved.read_text()) if saved.exists() else {}
    for level in [int(v) for v in args.levels.split(",")]:
        if str(level) in results:
            continue
        path, trace = greedy_kl_path(routed, calib, level, fixed, args.batch_size, pad)
        greedy = score_many(routed, val, pad, args.batch_size, {"greedy-kl": (path, None)}, fixed)[
            "greedy-kl"
        ]
        source = args.per_example_27 if level == 27 else args.per_example.format(level=level)
        others = json.loads(Path(source).read_text()) if Path(source).exists() else {}
        row = {
            "path": list(path),
            "calibration_kl_trace": trace,
            "kl": float(np.mean(greedy["kl"])),
            "agreement": float(np.mean(greedy["agreement"])),
            "fidelity": float(np.mean(greedy["fidelity"])),
            "others": {m: float(np.mean(v["kl"])) for m, v in others.items()},
            "paired_kl": {
                f"{m} - greedy-kl": paired(v["kl"], greedy["kl"])
                for m, v in others.items()
                if len(v["kl"]) == len(val)
            },
        }
        results[str(level)] = row
        saved.write_text(json.dumps(results, indent=2))
        print(level, json.dumps({k: row[k] for k in ("path", "kl", "others", "paired_kl")}), flush=True)


if __name__ == "__main__":
    main()
