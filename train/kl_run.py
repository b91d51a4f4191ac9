"""``train_kl`` (``drllm train --objective kl``): routers fitted to the base model's own distribution.

Steps: lock the output folder; load the model; build (or reuse) the teacher continuations of a mixed prompt
pool (``drllm.train.teacher``); split them into training and validation prompts (seeded, by prompt); choose
the start path: of angular, block influence and the greedy path on the dense objective (never skipping a
protected layer), the one of least KL on calibration prompts taken from the training prompts; attach
routers of ``kind`` started on it; fit them (``drllm.train.kl``), saving the state after every epoch
(``kl_state.pt``: a rerun with the same settings resumes, other settings are refused); then publish
``router_config.json``, ``routers.safetensors``, ``metrics.json``, ``run.json`` and ``trained_on.json``
together.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import torch

from drllm.router import load_routed, load_tokenizer
from drllm.router.atomic import atomic_write
from drllm.router.routers import TRAINED_ON_NAME
from drllm.search.closeness import greedy_kl_path, heuristic_paths, path_kl
from drllm.search.gold import gold_options
from drllm.search.heuristics import calibration_statistics
from drllm.search.teacher import TeacherMismatchError, build_teacher, task_prompts

from . import outputs
from .kl import KL_KINDS, KLSettings, fit_kl, protected_layers, start_routers

log = logging.getLogger(__name__)

STATE_NAME = "kl_state.pt"
GREEDY_NAME = "greedy_kl.json"
STARTS = ("best", "angular", "block-influence", "greedy-kl")
UNITS = ("block", "sublayer")
DEFAULT_TASKS = ("arc_easy", "mmlu:dev", "gsm8k")


def train_kl(
    model,
    output: str,
    target_layers: float,
    tasks: list[str] | tuple[str, ...] = DEFAULT_TASKS,
    router: str = "static",
    examples_per_task: int | None = 400,
    continuation_tokens: int = 16,
    teacher_dir: str | None = None,
    min_layers: float = 0.0,
    epochs: int = 2,
    batch_size: int = 8,
    lr: float = 0.05,
    weight_decay: float = 0.0,
    val_fraction: float = 0.1,
    calibration_prompts: int = 64,
    seed: int = 0,
    resume: bool = True,
    tokenizer=None,
    device: str | None = None,
    dtype: str | None = None,
    data_dir: str | None = None,
    num_windows: int = 8,
    bottleneck: int = 128,
    gold_weight: float = 0.0,
    start: str = "best",
    baseline: str = "running-mean",
    units: str = "block",
    budget_by: str = "shift",
    start_margin: float = 2.0,
) -> dict:
    """Train routers on KL to the base model at ``target_layers`` mean layers; returns ``metrics.json``.

    ``start``: the static path the routers start on, ``best`` (of least KL on the calibration prompts
    among the others), ``angular``, ``block-influence`` or ``greedy-kl`` (``greedy_kl_path`` on the
    calibration prompts, so ``best`` favours it: it is chosen on the prompts it is scored on; every
    candidate's score is in ``metrics.json``, ``heuristic_calibration_kl``). ``baseline``: the
    score-function estimator's (``KLSettings.baseline``).
    ``units``: ``block`` (skip, execute) or ``sublayer`` (also the MLP alone or the attention alone: routers
    with 5 actions, score-function estimator only); with sublayers ``target_layers`` counts compute, a unit
    costing its share of the block (``drllm.router.unit_shares``). ``budget_by``: ``KLSettings.budget``.
    ``start_margin``: each head starts at ``+margin`` on the start path's action and ``-margin`` on the others
    (with 3 actions at temperature 1, a sample leaves the start at a layer with probability 2 / (e^(2 margin)
    + 2): 3.5% at 2, 21% at 1), so a smaller margin explores more and lets the path move sooner.
    """
    if router not in KL_KINDS:
        raise ValueError(f"the kl objective trains router kinds {KL_KINDS}, got {router!r}")
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got {units!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction!r}")
    output = Path(output)
    with outputs.locked(output):
        routed = load_routed(model, device=device, dtype=dtype)
        tokenizer = tokenizer or load_tokenizer(model)
        L = routed.num_layers
        settings = KLSettings(
            kind=router,
            target_layers=float(target_layers),
            min_layers=float(min_layers),
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            gold_weight=float(gold_weight),
            baseline=baseline,
            budget=budget_by,
            start_margin=float(start_margin),
        )
        settings.check()
        fixed = protected_layers(L, settings.protected)
        if not len(fixed) <= target_layers <= L:
            raise ValueError(f"target_layers must lie in [{len(fixed)}, {L}], got {target_layers!r}")
        prompts = task_prompts(list(tasks), tokenizer, limit=examples_per_task, data_dir=data_dir)
        gold = {}
        if gold_weight:  # before the teacher is generated: a pool without options is refused at once
            gold = gold_options(list(tasks), tokenizer, limit=examples_per_task, data_dir=data_dir)
            if not any(p.id in gold for p in prompts):
                raise ValueError(
                    f"--gold-weight {gold_weight} needs multiple-choice tasks among --tasks; "
                    f"{', '.join(tasks)} give no prompt with answer options"
                )
        teacher = teacher_dir or output / "teacher"
        try:  # starting over rebuilds a teacher made with other settings
            rows = build_teacher(
                routed, tokenizer, prompts, teacher, continuation_tokens, batch_size, rebuild=not resume
            )
        except TeacherMismatchError as err:
            raise ValueError(f"{err}; or pass resume=False (--resume false) to rebuild it") from None
        random.Random(seed).shuffle(rows)
        cut = int(round(len(rows) * (1 - val_fraction)))
        train_rows, val_rows = rows[:cut], rows[cut:]
        if not train_rows:
            raise ValueError("no training prompts: pass more tasks or examples_per_task")
        if val_fraction > 0 and not val_rows:
            log.warning(
                "no validation prompts: %.0f%% of %d prompts rounds to none, so metrics.json holds "
                "training KL only; pass more examples_per_task or a larger val_fraction",
                100 * val_fraction,
                len(rows),
            )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        calibration = train_rows[:calibration_prompts]
        stats = calibration_statistics(routed, tokenizer, [r["prompt"] for r in calibration], batch_size)
        level = int(round(target_layers))
        candidates = heuristic_paths(stats, L, level, fixed)
        if start in ("best", "greedy-kl"):
            candidates["greedy-kl"] = greedy_start(routed, calibration, level, fixed, batch_size, pad, output)
        if start != "best":
            if start not in candidates:
                raise ValueError(f"no {start} path skips {L - level} layers outside the protected ones")
            candidates = {start: candidates[start]}
        scores = {n: _mean(path_kl(routed, calibration, p, batch_size, pad)) for n, p in candidates.items()}
        first = min(scores, key=scores.get)
        run = {
            "objective": "kl",
            "model": str(model) if isinstance(model, (str, os.PathLike)) else routed.fingerprint,
            "fingerprint": routed.fingerprint,
            "tasks": list(tasks),
            "examples_per_task": examples_per_task,
            "continuation_tokens": continuation_tokens,
            "val_fraction": val_fraction,
            "calibration_prompts": calibration_prompts,
            "dtype": str(dtype),
            **({"start": start} if start != "best" else {}),  # the default keeps older runs' identity
            "start_path": list(candidates[first]),
            "num_windows": num_windows,
            "bottleneck": bottleneck,
            **({"units": units} if units != "block" else {}),  # block runs keep the identity they had
            **settings.identity(),
        }
        state = _resume_state(output / STATE_NAME, run, resume)
        routed.model.requires_grad_(False)
        actions = 5 if units == "sublayer" else 3
        routers = routed.add_routers(num_windows, bottleneck, seed, kind=router, actions=actions)
        start_routers(routers, candidates[first], settings.start_margin)
        history = fit_kl(
            routed,
            train_rows,
            val_rows,
            settings,
            pad,
            state=state,
            on_epoch=lambda s: _save_state(output / STATE_NAME, run, s),
            gold=gold,
        )
        metrics = {
            "objective": "kl",
            "router": router,
            "target_layers": target_layers,
            "start": first,
            "validation_prompts": len(val_rows),
            "gold_prompts": sum(r["id"] in gold for r in train_rows),
            "start_val_kl": _mean(path_kl(routed, val_rows, candidates[first], batch_size, pad))
            if val_rows
            else None,
            "heuristic_calibration_kl": scores,
            "history": history,
            **(history[-1] if history else {}),
        }
        with outputs.disk_errors(output):
            folder = outputs.staging(output)
            routers.save_pretrained(folder)
            outputs.write_json(folder / "metrics.json", metrics)
            outputs.write_json(folder / "run.json", run)
            ids = [outputs.trained_key(r["task"], r["id"].removeprefix(r["task"] + "/")) for r in train_rows]
            trained = {"ids": ids, "qualified": True}  # task/id keys
            outputs.write_json(folder / TRAINED_ON_NAME, trained)
            outputs.publish(folder, output)
        return metrics


def greedy_start(routed, calibration, level: int, fixed, batch_size: int, pad: int, output: Path) -> tuple:
    """``greedy_kl_path`` on the calibration prompts, kept in ``<output>/greedy_kl.json`` for reruns.

    The file records what the path was searched on (model, calibration prompt ids, level, protected
    layers); a file that does not match is searched again and replaced.
    """
    key = {
        "fingerprint": routed.fingerprint,
        "calibration": [r["id"] for r in calibration],
        "level": level,
        "fixed": list(fixed),
    }
    path = output / GREEDY_NAME
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = {}
        if {k: saved.get(k) for k in key} == key and isinstance(saved.get("path"), list):
            return tuple(saved["path"])
    found, trace = greedy_kl_path(routed, calibration, level, fixed, batch_size, pad)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write(
        path, lambda tmp: Path(tmp).write_text(json.dumps({**key, "path": list(found), "trace": trace}))
    )
    return found


def _mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))


def _resume_state(path: Path, run: dict, resume: bool) -> dict | None:
    if not resume or not path.exists():
        return None
    saved = outputs.load_checkpoint(path)
    if saved.get("run") != run:
        differ = sorted(k for k in set(run) | set(saved.get("run", {})) if saved["run"].get(k) != run.get(k))
        raise ValueError(
            f"{path} was made with other settings ({', '.join(differ)}); pass resume=False (--resume false) "
            "to start over"
        )
    return saved["state"]


def _save_state(path: Path, run: dict, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save({"run": run, "state": state}, tmp))


def read_metrics(output: str | os.PathLike) -> dict:
    """The ``metrics.json`` of a finished KL run."""
    return json.loads((Path(output) / "metrics.json").read_text())
