"""The KL experiment: heuristic static paths, the learned static path and input-conditioned routers, paired.

    .venv/bin/python benchmarks/kl_levels.py --levels 27,24 --per-task 360 --output runs/kl_levels

Training prompts: ARC-Easy train, MMLU dev, GSM8K train (its hashed 90%). Validation prompts: ARC-Easy
validation, MMLU validation, GSM8K validation (the hashed 10% of its train file, never trained on). Per level:
the angular and block-influence paths (calibrated on training prompts), the learned ``static`` path and
``linear`` routers trained with ``train_kl`` (both started from the better heuristic), the routers' budget
calibrated on training prompts so their mean level is the target. Every method is scored on every
validation prompt (mean KL to the base model over the teacher-forced continuation, top-1 agreement); the
comparisons are paired bootstrap 95% intervals of the mean difference. Resumes: finished trainings are kept.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from drllm.router import Relaxation, batch_prompts, load_routed, load_tokenizer, relaxed
from drllm.search.closeness import batch_tensors, greedy_kl_path, heuristic_paths, teacher_log_probs
from drllm.search.heuristics import calibration_statistics
from drllm.search.teacher import build_teacher, task_prompts
from drllm.train.kl import protected_layers
from drllm.train.kl_run import GREEDY_NAME, train_kl

VAL_TASKS = ["arc_easy:validation", "mmlu:validation", "gsm8k:validation"]
TRAIN_TASKS = ["arc_easy", "mmlu:dev", "gsm8k"]


@torch.no_grad()
def score(routed, rows, pad, batch_size, path=None, budget=None, fixed=()):
    """Per-row KL, top-1 agreement and layers for a static path or the attached routers."""
    return score_many(routed, rows, pad, batch_size, {"m": (path, budget)}, fixed)["m"]


@torch.no_grad()
def score_many(routed, rows, pad, batch_size, methods: dict, fixed=()):
    """``score`` for several methods ``{name: (path or None, budget)}``, the teacher run once per batch."""
    keys = ("kl", "agreement", "fidelity", "layers", "decisions")
    out = {name: {key: [] for key in keys} for name in methods}
    for start in range(0, len(rows), batch_size):
        batch = batch_tensors(rows[start : start + batch_size], pad, routed.device)
        routed.set_stand_ins(None)
        teacher = teacher_log_probs(routed, batch)
        target = batch["target"].bool()
        rows_of = target.nonzero()[:, 0]
        for name, (path, budget, *stand_ins) in methods.items():
            routed.set_stand_ins(stand_ins[0] if stand_ins else None)  # (path, budget[, stand_ins])
            if isinstance(path, torch.Tensor):  # per-row decisions [N, L] for every row of ``rows``
                rows_path = path[start : start + batch["ids"].shape[0]]
                hidden = routed.backbone(batch["ids"], batch["attention"], rows_path)
                counts = rows_path.sum(1).float().tolist()
            elif path is not None:
                hidden = routed.backbone(batch["ids"], batch["attention"], torch.tensor(list(path)))
                counts = [float(sum(path))] * batch["ids"].shape[0]
            else:
                relaxation = Relaxation(routed.routers, fixed=fixed, sample=False, budget=budget or 0.0)
                with relaxed(routed, relaxation):
                    hidden = routed.backbone(batch["ids"], batch["attention"], route_mask=batch["prompt"])
                counts = relaxation.layers().tolist()
                out[name]["decisions"] += relaxation.decisions().tolist()
            student = F.log_softmax(routed.lm_logits(hidden[target]).float(), -1)
            per_pos_kl = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)
            same = (student.argmax(-1) == teacher.argmax(-1)).float()
            for b in range(target.shape[0]):
                out[name]["kl"].append(float(per_pos_kl[rows_of == b].mean()))
                out[name]["agreement"].append(float(same[rows_of == b].mean()))
                # greedy fidelity: base continuation tokens reproduced before the first disagreement
                out[name]["fidelity"].append(float(same[rows_of == b].cumprod(0).sum()))
            out[name]["layers"] += counts
    routed.set_stand_ins(None)
    return out


@torch.no_grad()
def calibrate_budget(routed, tokenizer, prompts, batch_size, level, steps=14):
    """The skip-logit budget at which the routers' mean layers on ``prompts`` is closest to ``level``.

    Only the routers' decisions are needed (one backbone pass per batch, no teacher); training already
    folds its calibrated shift into the skip bias, so budget 0 is tried first.
    """

    def mean_layers(budget):
        routed.budget, counts = budget, []
        for start in range(0, len(prompts), batch_size):
            ids, mask = batch_prompts(tokenizer, prompts[start : start + batch_size], routed.device)
            counts += routed.route(ids, mask).sum(1).tolist()
        routed.budget = 0.0
        return float(np.mean(counts))

    best = (abs(mean_layers(0.0) - level), 0.0)
    lo, hi = -20.0, 20.0
    for _ in range(steps if best[0] > 0.25 else 0):
        mid = (lo + hi) / 2
        mean = mean_layers(mid)
        best = min(best, (abs(mean - level), mid))
        if mean > level:
            lo = mid  # too many layers: push skip up
        else:
            hi = mid
    return best[1]


def setup(args, output: Path):
    """Threads, the output folder, SmolLM2 with its tokenizer and pad id, and the protected layers."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    output.mkdir(parents=True, exist_ok=True)
    routed = load_routed("smollm2-135m-instruct", device="cpu")
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return routed, tokenizer, pad, protected_layers(routed.num_layers, (0, 1, -1))


def teacher_rows(routed, tokenizer, folder: Path, per_task: int, val_per_task: int):
    """The experiment's validation rows, training rows and 64 calibration rows (training, shuffled, seed 0).

    Teacher continuations (16 tokens) are reused from, or written to, ``folder/teacher-val`` and ``/teacher``.
    """
    val = build_teacher(routed, tokenizer, task_prompts(VAL_TASKS, tokenizer, limit=val_per_task),
                        folder / "teacher-val", 16, 16)  # fmt: skip
    train = build_teacher(routed, tokenizer, task_prompts(TRAIN_TASKS, tokenizer, limit=per_task),
                          folder / "teacher", 16, 16)  # fmt: skip
    shuffled = list(train)
    random.Random(0).shuffle(shuffled)
    return val, train, shuffled[:64]


def nested_greedy(routed, calib, level, fixed, bs, pad, out: Path, found: dict) -> tuple:
    """The greedy-KL path at ``level``, continued from the nearest higher level found so far (greedy paths
    are nested), and written where ``train_kl`` looks for it in each kind's folder (``greedy_kl.json``)."""
    above = [n for n in found if n > level]
    start = found[min(above)] if above else None
    path, trace = greedy_kl_path(routed, calib, level, fixed, bs, pad, start=start)
    found[level] = path
    key = {"fingerprint": routed.fingerprint, "calibration": [r["id"] for r in calib], "level": level}
    for kind in ("static", "linear", "mlp"):
        (out / f"{kind}-{level}").mkdir(parents=True, exist_ok=True)
        record = {**key, "fixed": list(fixed), "path": list(path), "trace": trace}
        (out / f"{kind}-{level}" / GREEDY_NAME).write_text(json.dumps(record))
    return path


def paired(a, b, seed=0, resamples=4000):
    """Mean of a - b with a paired percentile bootstrap 95% interval."""
    d = np.asarray(a) - np.asarray(b)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (resamples, len(d)))].mean(1)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", default="27,24")
    ap.add_argument("--per-task", type=int, default=360)
    ap.add_argument("--val-per-task", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--kinds", default="static,linear")
    ap.add_argument("--linear-levels", default="27", help="levels at which linear routers are trained too")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (1 when the cores are shared)")
    ap.add_argument("--output", default="runs/kl_levels")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--start", default="best", help="train_kl's start: best, angular, block-influence, greedy-kl"
    )
    ap.add_argument("--reward-baseline", default="running-mean", help="running-mean or per-prompt")
    ap.add_argument("--budget-by", default="shift", help="shift (of the skip logits) or price (per layer)")
    ap.add_argument(
        "--min-layers", type=float, default=0.0, help="per-prompt floor of input-conditioned routers"
    )
    ap.add_argument("--start-margin", type=float, default=2.0, help="train_kl's start_margin")
    ap.add_argument("--static-lr", type=float, default=0.05, help="learning rate of static routers")
    ap.add_argument("--no-greedy", action="store_true", help="leave the greedy-KL path out of the heuristics")
    args = ap.parse_args()
    out = Path(args.output)
    routed, tokenizer, pad, fixed = setup(args, out)
    L, bs = routed.num_layers, args.batch_size
    val, train, calib = teacher_rows(routed, tokenizer, out, args.per_task, args.val_per_task)
    stats = calibration_statistics(routed, tokenizer, [r["prompt"] for r in calib], bs)
    results = {"validation_prompts": len(val), "training_prompts": len(train), "levels": {}}
    if (out / "results.json").exists():  # levels from earlier runs stay
        results["levels"] = json.loads((out / "results.json").read_text()).get("levels", {})
    greedy = {}  # level -> greedy-KL path, so a lower level continues from a higher one
    for level in sorted((int(v) for v in args.levels.split(",")), reverse=True):
        heuristics = heuristic_paths(stats, L, level, fixed)
        if not args.no_greedy:  # the greedy path on the dense objective, on the same calibration prompts
            heuristics["greedy-kl"] = nested_greedy(routed, calib, level, fixed, bs, pad, out, greedy)
        static_paths = dict(heuristics)
        methods = score_many(routed, val, pad, bs, {n: (p, None) for n, p in heuristics.items()}, fixed)
        linear_levels = {int(v) for v in args.linear_levels.split(",") if v}
        kinds = [k for k in args.kinds.split(",") if k == "static" or level in linear_levels]
        for kind in kinds:
            folder = out / f"{kind}-{level}"
            if not (folder / "metrics.json").exists():
                train_kl(
                    routed,
                    str(folder),
                    level,
                    router=kind,
                    examples_per_task=args.per_task,
                    teacher_dir=str(out / "teacher"),
                    epochs=args.epochs,
                    batch_size=bs,
                    lr=args.static_lr if kind == "static" else 0.01,
                    tokenizer=tokenizer,
                    val_fraction=0.05,
                    start=args.start,
                    baseline=args.reward_baseline,
                    budget_by=args.budget_by,
                    min_layers=0.0 if kind == "static" else args.min_layers,
                    start_margin=args.start_margin,
                )
            routed.load_routers(folder)
            budget = calibrate_budget(routed, tokenizer, [r["prompt"] for r in calib], bs, level)
            methods[f"learned-{kind}"] = score(routed, val, pad, bs, budget=budget, fixed=fixed)
            methods[f"learned-{kind}"]["budget"] = budget
            routed.routers = None
            if kind != "static":  # the shuffled-input control: each prompt gets another prompt's decisions
                decisions = torch.tensor(methods[f"learned-{kind}"]["decisions"])
                order = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))
                methods[f"shuffled-{kind}"] = score(routed, val, pad, bs, path=decisions[order], fixed=fixed)
        heuristics = [m for m in ("angular", "block-influence", "greedy-kl") if m in methods]
        best = min(heuristics, key=lambda m: np.mean(methods[m]["kl"]))
        row = {
            m: {
                "kl": float(np.mean(v["kl"])),
                "agreement": float(np.mean(v["agreement"])),
                "fidelity": float(np.mean(v["fidelity"])),
                "layers": float(np.mean(v["layers"])),
                "layers_p5_p95": [
                    float(np.percentile(v["layers"], 5)),
                    float(np.percentile(v["layers"], 95)),
                ],
            }
            for m, v in methods.items()
        }
        compare = {}
        if "learned-static" in methods:
            for m in heuristics:
                compare["learned-static - " + m] = paired(methods["learned-static"]["kl"], methods[m]["kl"])
        for kind in kinds:
            if kind != "static" and "learned-static" in methods:
                compare[f"learned-{kind} - learned-static"] = paired(
                    methods[f"learned-{kind}"]["kl"], methods["learned-static"]["kl"]
                )
            if kind != "static":
                compare[f"learned-{kind} - shuffled-{kind}"] = paired(
                    methods[f"learned-{kind}"]["kl"], methods[f"shuffled-{kind}"]["kl"]
                )
        results["levels"][str(level)] = {"methods": row, "best_heuristic": best, "paired_kl": compare}
        results["levels"][str(level)]["paths"] = {n: list(p) for n, p in static_paths.items()}
        (out / "results.json").write_text(json.dumps(results, indent=2))
        (out / f"per_example-{level}.json").write_text(json.dumps(methods))
        print(json.dumps(results["levels"][str(level)], indent=1), flush=True)


if __name__ == "__main__":
    main()
