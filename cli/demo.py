"""``run_demo``: search, router training and evaluation end to end, then a plain-words ``report.md``.

    run_demo("runs/demo")      # SmolLM2-135M-Instruct on ARC-Easy, small sizes

Stages, each writing under ``output`` and loading the model once for all of them:

1. search paths on the training split into ``paths.jsonl``, each question with the single-edit sweep
   (resumes by example id; every record holds the settings it was searched with, and a file searched
   with other settings, such as another ``simulations``, is set aside and searched again);
2. train routers into ``routers/`` on soft targets (every safe path the search scored), by default one
   ``shared`` router head that reads layer 2 once per prompt (skipped when finished with the same
   arguments and the same paths);
3. evaluate base, routed, routed-static (the routers deviating from the best static path only where
   confident) and static baselines on the validation split into ``eval/`` (same), and export the
   deployable routers with their verdict.

A finished stage leaves a ``.done`` file holding its arguments as JSON; a stage is skipped when its
outputs exist and the marker matches the arguments of this call.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from drllm.evaluation import plots, report
from drllm.evaluation.evaluate import run_eval
from drllm.router import DEFAULT_MODEL, RoutedModel, load_routed, load_tokenizer
from drllm.search.records import SettingsMismatchError, check_output
from drllm.search.runner import run_search
from drllm.search.tasks import get_task
from drllm.search.tasks.style import describe, resolve_style
from drllm.train.targets import TARGETS, Targets
from drllm.train.trainer import ROUTER_KINDS, RouterKind, train_routers

MARKER = ".done"
STARTED = ".started"  # the arguments of the router training under way (or cut off)
log = logging.getLogger(__name__)


def run_demo(
    output: str = "runs/demo",
    model: str = DEFAULT_MODEL,
    task: str = "arc_easy",
    train_examples: int = 100,
    eval_examples: int | None = None,
    simulations: int = 24,
    epochs: int = 25,
    target_layers: tuple[int, ...] | None = None,
    baselines: tuple[str, ...] = ("greedy", "block-influence", "angular", "drop-last"),
    calibration: int = 128,
    greedy_examples: int = 8,
    fidelity_tokens: int = 16,
    seed: int = 0,
    sweep: bool = True,
    router: RouterKind = "shared",
    read_layer: int | None = 2,
    targets: Targets = "soft",
    route_from_static: bool = True,
    data_dir: str | None = None,
    routed: RoutedModel | None = None,
    tokenizer=None,
    device: str | None = None,
) -> dict:
    """Run search, router training and evaluation, and write ``<output>/report.md``.

    Args:
        output: folder for every stage's files and the report.
        model: model name or folder (ignored for loading when ``routed`` is given; still recorded).
        task: task name (``arc_easy``, ``jsonl:PATH``, ...).
        train_examples: training-split examples searched.
        eval_examples: validation-split examples evaluated (default: the whole split).
        simulations: MCTS simulations per searched example.
        epochs: router training epochs.
        target_layers: layer levels every method is compared at (default: L-3, three layers saved).
        baselines: static baselines evaluated.
        calibration: training examples the static baselines and router budgets are calibrated on.
        greedy_examples: training examples the greedy static path is searched on.
        fidelity_tokens: tokens of the base model's greedy continuation checked for greedy fidelity.
        seed: seed of search and router training (the random baseline draws seed 0).
        sweep: score every single-layer skip and repeat of each searched question (the continuous
            scores soft targets and the routers' regret are built from).
        router: router head (``mlp``, ``linear``, ``shared`` or ``knn``; see ``drllm train --router``).
        read_layer: the layer whose input every router reads, once per prompt (None: router i reads
            layer i).
        targets: ``soft`` (every safe path the search scored) or ``hard`` (the one path it chose).
        route_from_static: also evaluate ``routed-static`` and export ``eval/routers-at-<level>``.
        data_dir: benchmark data folder.
        routed: an already built ``RoutedModel`` to use instead of loading ``model`` (tests).
        tokenizer: its tokenizer.
        device: where the model runs (``load_routed``'s policy: CUDA when available).

    Returns:
        ``{"search": summary, "train": router metrics, "eval": result rows, "report": path of report.md}``.
    """
    for name, value in (("train_examples", train_examples), ("simulations", simulations), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    label_kinds = [k for k in ROUTER_KINDS if k != "static"]  # the demo trains on search labels
    if router not in label_kinds:
        raise ValueError(f"router must be one of {', '.join(label_kinds)}, got {router!r}")
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {', '.join(TARGETS)}, got {targets!r}")
    out = check_output(output, folder=True)  # a file in the way is refused before the model loads
    routed, tokenizer = _load(model, routed, tokenizer, device)
    if read_layer is not None and not (
        isinstance(read_layer, int)
        and not isinstance(read_layer, bool)
        and 0 <= read_layer < routed.num_layers
    ):
        raise ValueError(
            f"read_layer must be a layer of the model (0 to {routed.num_layers - 1}) or None, "
            f"got {read_layer!r}"
        )
    task_obj = get_task(task)
    paths = out / "paths.jsonl"
    style, measured = resolve_style(
        "auto", routed, tokenizer, task_obj, data_dir=data_dir, examples=min(64, train_examples)
    )
    style_line = describe(style, measured, task_obj.default_split_train)
    _say(style_line)
    _say(
        f"[1/3] search {task} ({train_examples} training examples, {simulations} simulations) -> {paths}",
    )
    search_args = {
        "task": task,
        "split": task_obj.default_split_train,
        "limit": train_examples,
        "simulations": simulations,
        "sweep": sweep,
        "seed": seed,
        "style": style,
        "data_dir": data_dir,
    }
    search = _search_stage(routed, tokenizer, paths, search_args)
    train_args = {
        "model": str(model),
        "task": task,
        "paths": str(paths),
        "paths_sha256": hashlib.sha256(paths.read_bytes()).hexdigest()[:16],  # what the routers learn from
        "train_examples": train_examples,
        "simulations": simulations,
        "epochs": epochs,
        "seed": seed,
        "style": style,
        "router": router,
        "read_layer": read_layer,
        "targets": targets,
    }
    metrics = _train_stage(routed, tokenizer, out / "routers", train_args)
    eval_args = {
        **train_args,
        "eval_examples": eval_examples,
        "target_layers": [int(x) for x in target_layers or _demo_levels(routed.num_layers)],
        "baselines": list(baselines),
        "calibration": calibration,
        "greedy_examples": greedy_examples,
        "fidelity_tokens": fidelity_tokens,
        "route_from_static": route_from_static,
    }
    split = "validation" if "validation" in task_obj.splits else task_obj.default_split_eval
    rows, decisions = _eval_stage(routed, tokenizer, out, eval_args, split, data_dir)
    verdicts = _read_verdicts(out / "eval" / "verdict.md")
    text = report_text(
        search,
        metrics,
        rows,
        decisions,
        routed.num_layers,
        task,
        str(model),
        style_line,
        train_args,
        verdicts,
    )
    path = out / "report.md"
    report.atomic_write_text(path, text)
    _say(f"report: {path}")
    return {"search": search, "train": metrics, "eval": rows, "report": str(path)}


def _read_verdicts(path: Path) -> list[str]:
    """The exported routers' verdicts that ``run_eval`` wrote (none without ``routed-static``)."""
    if not path.is_file():
        return []
    return [line[2:].strip() for line in path.read_text().splitlines() if line.startswith("- ")]


def _search_stage(routed, tokenizer, paths: Path, args: dict) -> dict:
    """Stage 1: search, resuming by example id; a file searched with other settings is searched again."""
    try:
        return run_search(routed, output=str(paths), tokenizer=tokenizer, **args)
    except SettingsMismatchError as err:
        _say(f"[1/3] {str(err).split('; restart')[0].split(': the task changed')[0]}")  # (no flag advice)
        _say(f"[1/3] searching again into {paths}; the old file stays beside it as {paths.name}.old-<time>")
        return run_search(routed, output=str(paths), tokenizer=tokenizer, restart=True, **args)


def _demo_levels(num_layers: int) -> list[int]:
    """The demo's default layer level: L-3 (the issue's "3 layers saved"), or 1 for a smaller model."""
    return [max(num_layers - 3, 1)]


def _load(model, routed, tokenizer, device):
    if routed is not None:
        if tokenizer is None:
            raise ValueError("run_demo got a RoutedModel without its tokenizer; pass tokenizer=")
        return load_routed(routed, device=device), tokenizer
    return load_routed(model, device=device), tokenizer if tokenizer is not None else load_tokenizer(model)


def _say(text: str) -> None:
    log.info(text)


def _finished(folder: Path, args: dict, files: tuple[str, ...]) -> bool:
    """Whether a stage's files exist and its marker holds exactly ``args``."""
    return all((folder / f).is_file() for f in files) and _holds(folder / MARKER, args)


def _holds(marker: Path, args: dict) -> bool:
    """Whether a marker file holds exactly ``args``."""
    try:
        return json.loads(marker.read_text()) == json.loads(json.dumps(args))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def _mark(folder: Path, args: dict, name: str = MARKER) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    report.atomic_write_text(folder / name, json.dumps(args, indent=2, sort_keys=True) + "\n")


def _train_stage(routed, tokenizer, folder: Path, args: dict) -> dict:
    """Stage 2: train the routers (or reuse finished ones); the routers end up loaded from ``folder``."""
    if _finished(folder, args, ("routers.safetensors", "metrics.json")):
        _say(f"[2/3] train routers: already done in {folder}, reusing them")
    else:
        _say(f"[2/3] train routers ({args['epochs']} epochs) -> {folder}")
        resume = _holds(folder / STARTED, args)  # only a cut-off run with these arguments continues
        (folder / MARKER).unlink(missing_ok=True)
        (folder.parent / "eval" / MARKER).unlink(missing_ok=True)
        _mark(folder, args, STARTED)
        train_routers(
            routed,
            args["paths"],
            str(folder),
            epochs=args["epochs"],
            seed=args["seed"],
            router=args["router"],
            read_layer=args["read_layer"],
            targets=args["targets"],
            resume=resume,
            tokenizer=tokenizer,
        )
        _mark(folder, args)
    routed.load_routers(folder)
    return json.loads((folder / "metrics.json").read_text())


def _eval_stage(routed, tokenizer, out: Path, args: dict, split: str, data_dir):
    """Stage 3: evaluate (or reuse a finished evaluation); returns the rows and the saved decisions."""
    folder = out / "eval"
    if _finished(folder, args, ("results.json", "decisions.json")):
        _say(f"[3/3] evaluate: already done in {folder}, reusing the results")
    else:
        count = "all" if args["eval_examples"] is None else args["eval_examples"]
        _say(f"[3/3] evaluate on {split} ({count} examples) -> {folder}")
        (folder / MARKER).unlink(missing_ok=True)
        run_eval(
            routed,
            args["task"],
            str(folder),
            routers=str(out / "routers"),
            split=split,
            limit=args["eval_examples"],
            target_layers=tuple(args["target_layers"]),
            baselines=tuple(args["baselines"]),
            calibration=args["calibration"],
            greedy_examples=args["greedy_examples"],
            fidelity_tokens=args["fidelity_tokens"],
            random_seeds=1,
            style=args["style"],
            data_dir=data_dir,
            tokenizer=tokenizer,
            route_from_static=args["route_from_static"],
        )
        _mark(folder, args)
    rows = report.read_results(folder / "results.json")
    return rows, json.loads((folder / "decisions.json").read_text())


# --------------------------------------------------------------------------- report


def report_text(
    search: dict,
    metrics: dict,
    rows: list,
    decisions: list[dict],
    num_layers: int,
    task: str,
    model: str,
    style_line: str = "",
    setup: dict | None = None,
    verdicts: list[str] | None = None,
) -> str:
    """The demo's ``report.md``: what search, the routers and the evaluation found, in plain words."""
    parts = [
        f"# Dr.LLM demo: {task} on {model}\n",
        f"The model has {num_layers} layers. Links: [trade-off plot](eval/tradeoff.png), "
        "[per-layer decisions](eval/decisions.png), [results table](eval/results.md), "
        "[per-example outcomes](eval/examples.jsonl).\n",
        *(
            [f"Search and evaluation use one {style_line[0].lower()}{style_line[1:]}.\n"]
            if style_line
            else []
        ),
        "## Search\n",
        *_search_lines(search),
        "## Routers\n",
        *_router_lines(metrics, setup or {}),
        "## Evaluation at matched compute\n",
        "Every method runs at the same mean layers per prompt (the level); intervals are 95% bootstrap "
        "intervals, differences are paired on the same questions with exact McNemar p-values (* p < 0.05).\n",
        report.markdown_table(rows, num_layers),
        "## What it says\n",
        *report.findings(rows),
        "",
        *_verdict_lines(rows, verdicts or []),
        "## Where the routers skip and repeat\n",
        *_where_lines(decisions),
    ]
    return "\n".join(parts)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _search_lines(s: dict) -> list[str]:
    if not s.get("examples"):
        return ["No training example was searched.\n"]
    return [
        f"Search looked at {s['examples']} training questions. With every layer run once the model answered "
        f"{_pct(s['base_accuracy'])} of them correctly.",
        f"- For {_pct(s['shorter_when_right'])} of the questions it got right, search found a correct path "
        "with fewer layers.",
        f"- For {_pct(s['fixed_when_wrong'])} of the questions it got wrong, search found a path "
        "that answers correctly.",
        f"- The chosen paths run {s['mean_layers']:.2f} layers on average (of {s['num_layers']}).",
        *(
            [
                f"- Every question's single-layer skips and repeats were scored too; a question the model "
                f"got right has {s['safe_paths']:.1f} scored paths that keep its answer on average, and "
                "the routers learn the share of skip, execute and repeat over them."
            ]
            if "safe_paths" in s
            else []
        ),
        "",
    ]


def _router_lines(m: dict, setup: dict) -> list[str]:
    lines = []
    if setup.get("router"):
        read = setup.get("read_layer")
        where = (
            f"all reading the input of layer {read} once per prompt"
            if read is not None
            else "router i reading the input of layer i"
        )
        lines.append(
            f"Router head `{setup['router']}`, {where}, trained on {setup.get('targets', 'hard')} targets."
        )
    if "macro_f1" not in m:
        return ["\n".join(lines + ["The routers' validation metrics were not recorded."]) + "\n"]
    if "verdict" in m:
        lines.append(
            "Regret is the gold margin lost, against each held-out question's best single skip or repeat, by "
            "the edit the routers are most sure of; the " + m["verdict"] + "."
        )
    text = f"Macro F1 of the routers' decisions on held-out searched questions: {m['macro_f1']:.3f}"
    if "layers_pred" in m and "layers_target" in m:
        pred, target = m["layers_pred"], m["layers_target"]
        text += f"; they pick {pred:.2f} layers where the targets' argmax has {target:.2f}"
    if setup.get("targets") == "soft":
        text += " (against soft targets, whose argmax is nearly always execute, this says little)"
    lines.append(text + ".")
    return ["\n".join(lines) + "\n"]


def _verdict_lines(rows: list, verdicts: list[str]) -> list[str]:
    """One plain verdict: do the routers beat the base model, the best static path, their own controls?"""
    routed = [r for r in rows if r.method == "routed" and r.level is not None]
    if not routed:
        return ["No routers were evaluated.\n"]
    wins_static = [
        r for r in routed if r.vs_static and r.vs_static.significant and r.vs_static.difference.value > 0
    ]
    loses_static = [
        r for r in routed if r.vs_static and r.vs_static.significant and r.vs_static.difference.value < 0
    ]
    controls = {(r.method, r.level): r for r in rows if r.method in ("routed-random", "routed-majority")}
    beat_controls = [
        r
        for r in routed
        if all(
            r.accuracy.value > c.accuracy.value
            for c in (controls.get(("routed-random", r.level)), controls.get(("routed-majority", r.level)))
            if c is not None
        )
    ]
    lines = ["Verdict:"]
    lines += [f"- The exported routers (`eval/routers-at-<level>`): {v}" for v in verdicts]
    lines.append(
        f"- The routers are significantly above the best static path at {len(wins_static)} of {len(routed)} "
        f"levels and significantly below it at {len(loses_static)}."
    )
    lines.append(
        f"- They score above both of their own controls (random routing at their rates, their majority "
        f"path) at {len(beat_controls)} of {len(routed)} levels"
        + (
            "; where they do not, they have learned no per-input signal."
            if len(beat_controls) < len(routed)
            else "."
        )
    )
    return lines + [""]


def _where_lines(decisions: list[dict]) -> list[str]:
    routed = [d for d in decisions if d["method"] == "routed" and d["decisions"]]
    if not routed:
        return ["No routed decisions were recorded.\n"]
    ref = routed[len(routed) // 2]
    shares = plots.decision_shares(ref["decisions"])  # [3, L]
    where = f"at {ref['level']} layers" if ref.get("level") else f"at budget {ref['budget']:g}"
    counts = [sum(d) for d in ref["decisions"]]
    n, L = len(counts), len(ref["decisions"][0])
    full, few = sum(c >= L for c in counts), sum(c <= L // 2 for c in counts)
    lines = [f"From the routers' decisions {where} on {n} evaluation prompts:"]
    lines.append(
        f"- layers run per prompt: {sum(counts) / n:.2f} on average, from {min(counts)} to {max(counts)}; "
        f"{_pct(full / n)} of prompts run {L} or more, {_pct(few / n)} run {L // 2} or fewer."
    )
    for k, verb in ((0, "skipped"), (2, "repeated")):
        top = [i for i in shares[k].argsort()[::-1][:3] if shares[k][i] > 0]
        if top:
            named = ", ".join(f"layer {i} ({_pct(shares[k][i])} of prompts)" for i in top)
            lines.append(f"- most often {verb}: {named}.")
        else:
            lines.append(f"- no layer is ever {verb}.")
    return lines + [""]
