"""Argument checks of ``drllm train``: one line naming the argument and its value, before anything loads."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from drllm.router import RoutedModel
from drllm.search.tasks.base import MAX_PROMPT_CHARS
from drllm.search.teacher import check_task_list
from drllm.search.tracking import check_tags

from .kl import BASELINES, BUDGETS
from .kl_run import STARTS, UNITS
from .outputs import CURRENT_NAME
from .targets import TARGETS

ROUTER_KINDS = ("mlp", "linear", "shared", "knn", "static")
CONTROLS = ("none", "shuffled")
LOGGERS = ("csv", "wandb", "none", "", None, False)
OBJECTIVES = ("labels", "kl")
LABEL_ONLY = {"paths": None, "targets": "soft", "safe_margin": 0.0, "control": "none", "online": False,
              "read_layer": 2, "cache_dir": None, "wandb_project": None, "wandb_name": None,
              "wandb_tags": None, "strategy": "auto", "precision": "32-true", "devices": 1}  # fmt: skip
# what --objective kl takes instead of a Lightning flag it has no use for
KL_INSTEAD = {"precision": "; --dtype sets the model's dtype", "strategy": "; it trains in one process",
              "devices": "; it trains in one process (--device picks where)"}  # fmt: skip
KL_ONLY = {"target_layers": None, "min_layers": 0.0, "tasks": None, "examples_per_task": 400,
           "continuation_tokens": 16, "gold_weight": 0.0, "start": "best",
           "reward_baseline": "running-mean", "units": "block", "budget_by": "shift",
           "start_margin": 2.0}  # fmt: skip


def check_arguments(args: dict) -> None:
    """Refuse a bad argument with one line naming it and its value, before anything loads or is written."""
    if args["objective"] not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {args['objective']!r}")
    if args["objective"] == "kl":
        if args["target_layers"] is None or not _finite(args["target_layers"]):
            raise ValueError(f"--objective kl needs --target-layers N, got {args['target_layers']!r}")
        if args["target_layers"] <= 0:
            raise ValueError(f"target_layers must be a number of layers > 0, got {args['target_layers']!r}")
        if not _whole(args["continuation_tokens"]) or args["continuation_tokens"] < 1:
            raise ValueError(
                f"continuation_tokens must be a whole number >= 1, got {args['continuation_tokens']!r}"
            )
        if not _finite(args["min_layers"]) or not 0 <= args["min_layers"] <= args["target_layers"]:
            raise ValueError(
                f"min_layers must lie in [0, target_layers = {args['target_layers']}], "
                f"got {args['min_layers']!r}"
            )
        if not _finite(args["gold_weight"]) or args["gold_weight"] < 0:
            raise ValueError(f"gold_weight must be a number >= 0, got {args['gold_weight']!r}")
        if not _finite(args["start_margin"]) or args["start_margin"] <= 0:
            raise ValueError(f"start_margin must be a number > 0, got {args['start_margin']!r}")
        choices = (
            ("start", STARTS),
            ("reward_baseline", BASELINES),
            ("units", UNITS),
            ("budget_by", BUDGETS),
        )
        for name, allowed in choices:
            if args[name] not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {args[name]!r}")
        if args["tasks"] is not None and not list(args["tasks"]):
            raise ValueError("tasks is empty: name at least one task (or leave it out for the default pool)")
        if args["tasks"] is not None:
            check_task_list(list(args["tasks"]))
        for name, default in LABEL_ONLY.items():
            if args[name] != default:
                raise ValueError(
                    f"{name} is a flag of label training; --objective kl does not use it"
                    f"{KL_INSTEAD.get(name, '')}"
                )
        if args["logger"] == "wandb":
            raise ValueError("logger wandb is a flag of label training; --objective kl logs no metrics")
        if args["accelerator"] not in ("auto", "cpu"):
            raise ValueError(
                f"accelerator {args['accelerator']!r} is a flag of label training; with --objective kl "
                "pass --device (cuda, cuda:1, cpu, ...)"
            )
    elif any(args[name] != default for name, default in KL_ONLY.items()):
        used = [name for name, default in KL_ONLY.items() if args[name] != default]
        raise ValueError(f"{', '.join(used)}: flags of --objective kl; label training does not use them")
    elif args["paths"] is None:
        raise ValueError("--objective labels trains on a search's paths file: pass --paths FILE")
    elif args["router"] == "static":
        raise ValueError("static routers are trained with --objective kl (they have no input to learn from)")
    for name in ("epochs", "num_windows", "bottleneck", "batch_size"):
        if not _whole(args[name]) or args[name] < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {args[name]!r}")
    if not _whole(args["seed"]) or not 0 <= args["seed"] < 2**32:
        raise ValueError(f"seed must be a whole number in [0, 2**32), got {args['seed']!r}")
    if args["lr"] is not None and (not _finite(args["lr"]) or args["lr"] <= 0):
        raise ValueError(f"lr must be a finite number > 0, got {args['lr']!r}")
    if not _finite(args["weight_decay"]) or args["weight_decay"] < 0:
        raise ValueError(f"weight_decay must be a finite number >= 0, got {args['weight_decay']!r}")
    if not _finite(args["val_fraction"]) or not 0 < args["val_fraction"] < 1:
        raise ValueError(
            f"val_fraction must be a share strictly between 0 and 1, got {args['val_fraction']!r}"
        )
    if args["router"] is not None and args["router"] not in ROUTER_KINDS:  # None: the recommended kind
        raise ValueError(f"router must be one of {ROUTER_KINDS}, got {args['router']!r}")
    if args["control"] not in CONTROLS:
        raise ValueError(f"control must be one of {CONTROLS}, got {args['control']!r}")
    if args["read_layer"] is not None and (not _whole(args["read_layer"]) or args["read_layer"] < 0):
        raise ValueError(f"read_layer must be None or a layer index >= 0, got {args['read_layer']!r}")
    if not _whole(args["neighbours"]) or args["neighbours"] < 1:
        raise ValueError(f"neighbours must be a whole number >= 1, got {args['neighbours']!r}")
    if args["router"] == "knn" and args["online"]:
        raise ValueError("a knn router keeps the training prompts' features: it cannot train online")
    if args["targets"] not in TARGETS:
        raise ValueError(f"targets must be one of {TARGETS}, got {args['targets']!r}")
    if not _finite(args["safe_margin"]):
        raise ValueError(f"safe_margin must be a finite number, got {args['safe_margin']!r}")
    check_tags(args["wandb_tags"])
    if args["logger"] not in LOGGERS:
        raise ValueError(f"logger must be 'csv', 'wandb' or 'none', got {args['logger']!r}")
    if isinstance(args["model"], RoutedModel) and args["tokenizer"] is None:
        raise ValueError("train_routers got a RoutedModel without its tokenizer; pass tokenizer=")
    for name in ("output", "cache_dir"):
        if args[name] is not None and Path(args[name]).exists() and not Path(args[name]).is_dir():
            raise ValueError(f"{name} {args[name]} is a file; it must be a folder")
    _check_current(args["output"])
    if args["device"] is not None:
        try:
            torch.device(args["device"])
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device {args['device']!r} is not a torch device ({err})") from None


def _check_current(output) -> None:
    """Refuse an output whose ``current`` is not the symlink a publish switches (``cp -rL`` makes it real)."""
    if output is None:
        return
    current = Path(output) / CURRENT_NAME
    if current.exists() and not current.is_symlink():
        kind = "folder" if current.is_dir() else "file"
        raise ValueError(
            f"output {output}: {current} is a real {kind}, not the link a run publishes through (a copy "
            f"such as cp -rL made it); remove {current} (the files beside it stay) or train into a new folder"
        )


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_prompts(rows, paths) -> None:
    """Refuse a searched prompt too long to tokenize (``MAX_PROMPT_CHARS``), naming the example."""
    for row in rows:
        if len(row.prompt) > MAX_PROMPT_CHARS:
            raise ValueError(
                f"{paths}: example {row.id!r} has a prompt of {len(row.prompt)} characters, "
                f"more than {MAX_PROMPT_CHARS}"
            )
