"""``drllm search``: run MCTS over decision vectors for many examples, trees advancing in lockstep.

A window of ``batch_size`` examples is searched at once: every round, each unfinished tree proposes one
path, one batched evaluator call scores them all, and each finished example is written (and flushed)
to the output at once, then replaced by the next example. Each tree is seeded from (seed, example id),
so an example's result does not depend on the batch size, its neighbours or a resume.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

from drllm.router import RoutedModel, load_routed, load_tokenizer
from drllm.router.compute import unit_shares

from . import progress
from .distributed import LAUNCHED, barrier, launch_sharded, merge, rank_info, rank_output, shard
from .evaluator import PathEvaluator
from .mcts import SearchConfig
from .records import (
    SearchOutput,
    SearchRecord,
    SearchSettings,
    SettingsMismatchError,
    check_output,
    read_records,
    set_aside,
)
from .supervision import CONTROLS, Supervision, format_reliability, reliability, search_examples
from .tasks import Scoring, Style, get_task, require_gold, same_task
from .tasks.style import describe, resolve_style
from .tracking import check_tags, wandb_offline

UNITS = ("block", "sublayer")
log = logging.getLogger(__name__)


def run_search(
    model: str,
    task: str,
    output: str,
    split: str | None = None,
    limit: int | None = None,
    simulations: int = 50,
    batch_size: int = 8,
    scoring: Scoring | None = None,
    style: Style = "auto",
    seed: int = 0,
    restart: bool = False,
    data_dir: str | None = None,
    tokenizer=None,
    max_rows: int = 64,
    max_new_tokens: int = 32,
    question_field: str = "question",
    answer_field: str = "answer",
    choices_field: str | None = None,
    hf_config: str | None = None,
    wandb_project: str | None = None,
    wandb_name: str | None = None,
    wandb_tags: list[str] | None = None,
    device: str | None = None,
    dtype: str | None = None,
    devices: int = 1,
    sweep: bool = True,
    control: str | None = None,
    seeds: int = 1,
    safe_margin: float = 0.0,
    fix_margin: float = 0.0,
    strict: bool = False,
    units: str = "block",
) -> dict:
    """Search paths for the examples of a task and append them to ``output`` (resumable).

    Args:
        model: a model name or path (``"smollm2-135m-instruct"`` for the embedded default) or a RoutedModel.
        task: task name (``arc_easy``, ``gsm8k``, ``math:3``, ``jsonl:PATH``, ...).
        output: the JSONL file to append to; examples already in it are skipped.
        split: dataset split to search on (default: the task's training split).
        limit: at most this many examples (the first ones of the split).
        simulations: MCTS simulations per example.
        batch_size: examples searched in lockstep (rows per evaluator call).
        scoring: reward; the task's default when None.
        style: prompt style: ``plain``, ``chat``, or ``auto`` (the better of the two for the base model on
            the training split; see :mod:`drllm.search.tasks.style`).
        seed: base seed; each tree uses a seed derived from (seed, example id).
        restart: set an existing ``output`` aside (``<output>.old-<timestamp>``) and start over; without
            it, an output whose records were searched with other settings (model, task, split, scoring,
            style, simulations, seed) is refused.
        data_dir: benchmark data folder (default: ``$DRLLM_DATA`` or ``../shared/data``).
        tokenizer: the tokenizer, when ``model`` is a RoutedModel.
        max_rows: rows per forward pass of the evaluator.
        max_new_tokens: decoding budget of the ``generate`` scoring.
        question_field: ``hf:`` tasks, the question column.
        answer_field: ``hf:`` tasks, the answer column (for multiple choice: index, label or option text).
        choices_field: ``hf:`` tasks, the options column; makes the task multiple choice.
        hf_config: ``hf:`` tasks, the dataset configuration name.
        wandb_project: log progress to this Weights & Biases project (online when ``wandb login`` or
            ``WANDB_API_KEY`` gives credentials, else offline; ``drllm train`` takes the same switch).
        wandb_name: the W&B run name (default: ``search-<task>-rank<r>``).
        wandb_tags: W&B tags of the run.
        device: where the model runs (see ``drllm.router.load_routed``: CUDA when available by default);
            under torchrun each rank takes its own GPU.
        dtype: the model's dtype: auto or None keeps the checkpoint's; float32, bfloat16 or float16.
        devices: processes to shard the examples over, launched with torchrun (one per GPU when there are
            GPUs, else CPU processes); each tree is seeded from its example, so the result is the same.
        sweep: score every single-layer skip and repeat first (recorded, and given to the tree).
        control: ``wrong-gold`` also searches each example with a random wrong option declared gold and
            prints the lucky-fix rate (see :mod:`drllm.search.supervision`); ``none`` (the default) runs none.
        seeds: 2 searches each example twice and keeps the edits both seeds agree on.
        safe_margin: a path keeps a base-correct answer safely when its gold margin is at least this.
        fix_margin: a path fixes a base-wrong answer (and the wrong-gold control's) only when the gold wins
            by more than this many nats; 0 counts every correct path.
        strict: stop at the first task row that cannot be searched (an empty prompt, a repeated option,
            a line that is not JSON, ...); by default each such row is skipped with a warning naming it.
        units: ``block`` (skip, execute, repeat) or ``sublayer``: the tree may also run a layer's MLP alone
            (decision 3) or its attention alone (4), each costing its share of the layer's multiply-adds
            (``drllm.router.compute.unit_shares``); the chosen path is the cheapest correct one.

    Returns:
        The summary (see ``summarize``) over every example in the output file for this task.
    """
    _check_counts(
        limit=limit,
        simulations=simulations,
        batch_size=batch_size,
        max_rows=max_rows,
        max_new_tokens=max_new_tokens,
    )
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be a whole number in [0, 2**32), got {seed!r} (as drllm train takes)")
    if (
        isinstance(safe_margin, bool)
        or not isinstance(safe_margin, (int, float))
        or not math.isfinite(safe_margin)
    ):
        raise ValueError(f"safe_margin must be a finite number, got {safe_margin!r}")
    if (
        isinstance(fix_margin, bool)
        or not isinstance(fix_margin, (int, float))
        or not 0 <= fix_margin < math.inf
    ):
        raise ValueError(f"fix_margin must be a finite number >= 0, got {fix_margin!r}")
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(f"devices must be a whole number >= 1, got {devices!r}")
    if units not in UNITS:
        raise ValueError(f"units must be one of {', '.join(UNITS)}, got {units!r}")
    control = None if control in (None, "none") else control  # "none": what the records say
    if control is not None and control not in CONTROLS:
        raise ValueError(f"control must be 'none' or one of {', '.join(CONTROLS)}, got {control!r}")
    if devices > 1 and "WORLD_SIZE" not in os.environ:
        if restart:
            set_aside(Path(output))  # each rank sets its own file aside
        launch_sharded(devices, locals())
        return _reported(output, task)
    fields = {"question_field": question_field, "answer_field": answer_field, "choices_field": choices_field}
    task_obj = get_task(task, **fields, config=hf_config) if task.startswith("hf:") else get_task(task)
    _refuse_task_file(output, task_obj)
    require_gold(task_obj, "the search (its rewards are task scores)")
    if control == "wrong-gold" and task_obj.kind != "choice":
        raise ValueError(
            f"control wrong-gold declares a wrong option gold; task {task!r} has exact answers, no options"
        )
    split = split or task_obj.default_split_train
    examples = task_obj.load(split, data_dir=data_dir, limit=limit, strict=strict)
    rank, world, local_rank = rank_info()
    if world > 1 and device is None and torch.cuda.is_available():
        device = f"cuda:{local_rank}"  # launched by torchrun: one GPU per rank
    check_output(output)
    routed, tokenizer, model_name = _load(model, tokenizer, device, dtype)
    target = output
    if world > 1:  # launched by torchrun: this process searches one shard into its own file
        examples, target = shard(examples, output, rank, world), rank_output(output, rank, world)
    style, measured = resolve_style(
        style, routed, tokenizer, task_obj, scoring, data_dir, max_new_tokens=max_new_tokens
    )
    if rank == 0:
        log.info(describe(style, measured, task_obj.default_split_train))
    evaluator = PathEvaluator(routed, tokenizer, task_obj, scoring, style, max_rows, max_new_tokens)
    unit_costs = unit_shares(routed.model.config) if units == "sublayer" else None
    config = SearchConfig(simulations=simulations, unit_costs=unit_costs)
    supervision = Supervision(sweep, control, seeds, safe_margin, float(fix_margin))
    settings = SearchSettings(
        task=task,
        model=model_name,
        scoring=evaluator.scoring,
        style=style,
        split=split,
        simulations=simulations,
        seed=seed,
        fingerprint=routed.fingerprint,
        weight_probe=tuple(routed.weight_probe),
        sweep=sweep,
        control=control or "none",
        seeds=seeds,
        safe_margin=safe_margin,
        fix_margin=float(fix_margin),
        max_new_tokens=max_new_tokens if evaluator.scoring == "generate" else None,
        dtype=str(routed.model.dtype).removeprefix("torch."),
        units=units,
    )
    if world > 1:  # the main output too, which the ranks' files are merged into
        settings.check(read_records(output, allow_empty=True), Path(output))
    examples = evaluator.usable(examples, strict)
    with SearchOutput(target, settings, restart) as out:
        _check_unchanged(out.records, examples, evaluator, target)
        todo = [ex for ex in examples if str(ex.id) not in out.done]
        bar = progress.bar(len(examples), "search", "ex", len(examples) - len(todo))
        bar.disable = bar.disable or rank != 0
        meta = {"task": task, "model": model_name, "scoring": evaluator.scoring, "style": style}
        run = _wandb_run(wandb_project, meta, rank, wandb_name, wandb_tags) if wandb_project else None
        logger = run.log if run else None
        search_examples(evaluator, todo, config, supervision, seed, batch_size, out.write, meta, bar, logger)
        bar.close()
        if run is not None:
            run.finish()
    if world > 1:
        barrier()
        if rank != 0:
            return None
        merge(output, world)
        if os.environ.get(LAUNCHED):
            return None  # the process that launched the ranks reports the merged output
    return _reported(output, task)


def _reported(output, task: str) -> dict:
    """The summary of the task's records in ``output``, logged."""
    summary = summarize([r for r in read_records(output, allow_empty=True) if same_task(r.task, task)])
    log.info(format_summary(summary))
    return summary


def _check_unchanged(records: dict, examples, evaluator: PathEvaluator, output) -> None:
    """Refuse resuming over records whose example changed in the task file since (prompt or gold)."""
    for ex in examples:
        record = records.get(str(ex.id))
        if record is None:
            continue
        for what, then, now in (
            ("prompt", record.prompt, evaluator.prompt_text(ex)),
            ("gold continuation", record.target, evaluator.gold_text(ex)),
        ):
            if then and then != now:
                raise SettingsMismatchError(
                    f"{output}: example {ex.id!r} was searched with another {what} ({then[:60]!r}, now "
                    f"{now[:60]!r}): the task changed since; pass --restart true to search it again"
                )


def _check_counts(**counts) -> None:
    """Refuse a count below 1 (``limit`` may be None: every example)."""
    for name, value in counts.items():
        if value is None and name == "limit":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


def _refuse_task_file(output, task_obj) -> None:
    """Refuse an output that is the task's own data file (its rows would be read as search records)."""
    for source in (getattr(task_obj, "path", None), getattr(task_obj, "dataset", None)):
        if source and Path(source).is_file() and Path(output).resolve() == Path(source).resolve():
            raise ValueError(
                f"output {output} is the task file of {task_obj.name!r}; choose another --output"
            )


def _load(model, tokenizer, device, dtype=None):
    if isinstance(model, RoutedModel):
        if tokenizer is None:
            raise ValueError("pass the tokenizer together with a RoutedModel")
        name = str(getattr(model.model.config, "name_or_path", "") or "model")
        return load_routed(model, device=device, dtype=dtype), tokenizer, name
    return load_routed(model, device=device, dtype=dtype), load_tokenizer(model), str(model)


def _wandb_run(project: str, meta: dict, rank: int, name: str | None = None, tags=None):
    """A W&B run for this search's progress (off unless a project is given)."""
    import wandb

    return wandb.init(
        project=project,
        config=meta,
        job_type="search",
        name=name or f"search-{meta['task']}-rank{rank}",
        tags=check_tags(tags),
        mode="offline" if wandb_offline() else "online",
        reinit="finish_previous",
    )


def summarize(records: list[SearchRecord]) -> dict:
    """Base accuracy, share with a shorter correct path, share of base-wrong examples fixed, layers saved.

    Every record must carry ``reward`` and ``base_reward`` (as the search writes them).
    """
    n = len(records)
    if n == 0:
        return {"examples": 0}
    L = records[0].num_layers or len(records[0].decisions)
    right = [r for r in records if r.base_reward >= 1.0]
    wrong = [r for r in records if r.base_reward < 1.0]
    shorter = [r for r in right if r.reward >= 1.0 and r.layers < L]
    fixed = [r for r in wrong if r.reward >= 1.0]
    return {
        "examples": n,
        "num_layers": L,
        "base_accuracy": len(right) / n,
        "path_accuracy": sum(r.reward >= 1.0 for r in records) / n,
        "shorter_when_right": len(shorter) / max(len(right), 1),
        "fixed_when_wrong": len(fixed) / max(len(wrong), 1),
        "mean_layers": sum(r.layers for r in records) / n,
        "mean_layers_saved": sum(L - r.layers for r in records) / n,
        "mean_evaluations": sum(r.evaluations for r in records) / n,
        **reliability(records),
    }


def format_summary(s: dict) -> str:
    """The summary as a few readable lines."""
    if not s.get("examples"):
        return "no examples searched"
    return (
        f"searched {s['examples']} examples on a {s['num_layers']}-layer model\n"
        f"  base accuracy          {s['base_accuracy']:.1%}   "
        f"(accuracy with the found paths: {s['path_accuracy']:.1%})\n"
        f"  shorter correct path   {s['shorter_when_right']:.1%} of base-correct examples\n"
        f"  fixed                  {s['fixed_when_wrong']:.1%} of base-wrong examples\n"
        f"  mean layers            {s['mean_layers']:.2f} ({s['mean_layers_saved']:+.2f} saved per example)"
        + ("\n" + format_reliability(s) if format_reliability(s) else "")
    )
