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

from drllm.evaluation import report
from drllm.evaluation.evaluate import check_eval_arguments, resolve_levels, run_eval
from drllm.router import DEFAULT_MODEL, RoutedModel, load_routed, load_tokenizer
from drllm.search.records import SettingsMismatchError, claimed_output
from drllm.search.runner import run_search
from drllm.search.tasks import get_task, require_gold
from drllm.search.tasks.style import describe, resolve_style
from drllm.train.targets import TARGETS, Targets
from drllm.train.trainer import ROUTER_KINDS, RouterKind, train_routers

from .demo_report import (  # noqa: F401 - moved; importable from here as before
    _pct,
    _router_lines,
    _search_lines,
    _verdict_lines,
    _where_lines,
    report_text,
)

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
    dtype: str | None = None,
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
        dtype: the model's dtype: auto or None keeps the checkpoint's; float32, bfloat16 or float16.

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
    # the evaluation's settings are checked now, not after the search and the training
    check_eval_arguments(baselines, calibration, 16, greedy_examples, fidelity_tokens, 1, eval_examples)
    # a file in the way is refused before the model loads; a refusal that needs the model leaves no folder
    with claimed_output(output, folder=True) as out:
        routed, tokenizer = _load(model, routed, tokenizer, device, dtype)
        if target_layers is not None:
            resolve_levels(target_layers, routed.num_layers)
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
    require_gold(task_obj, "the demo (it searches and trains on task scores)")
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


def _load(model, routed, tokenizer, device, dtype):
    if routed is not None:
        if tokenizer is None:
            raise ValueError("run_demo got a RoutedModel without its tokenizer; pass tokenizer=")
        return load_routed(routed, device=device, dtype=dtype), tokenizer
    return load_routed(
        model, device=device, dtype=dtype
    ), tokenizer if tokenizer is not None else load_tokenizer(model)


def _say(text: str) -> None:
    log.info(text)


def _finished(folder: Path, args: dict, files: tuple[str, ...]) -> bool:
    """Whether a stage's files exist whole (JSON that parses) and its marker holds exactly ``args``.

    A damaged file (a disk that filled, an edit by hand) makes the stage run again, with a note.
    """
    if not _holds(folder / MARKER, args):
        return False
    for name in files:
        path = folder / name
        if not path.is_file():
            return False
        if path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                _say(f"{path} is damaged; running its stage again")
                return False
    return True


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
