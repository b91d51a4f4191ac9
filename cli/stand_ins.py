"""``drllm stand-ins``: fit linear stand-ins (and damped repeats) for a path or routers, saved beside them."""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

from drllm.router import DEFAULT_MODEL

log = logging.getLogger("drllm")

DEFAULT_TASKS = ("arc_easy", "mmlu:dev", "gsm8k")
LOCK = ".stand-ins.lock"


def fit_stand_ins(
    output: str,
    model: str = DEFAULT_MODEL,
    decisions: str | None = None,
    routers: str | None = None,
    tasks: list[str] | None = None,
    calibration: int = 128,
    rank: int | None = None,
    repeats: bool = True,
    ridge: float = 1e-3,
    batch_size: int = 8,
    device: str | None = None,
    dtype: str | None = None,
) -> dict:
    """Fit stand-ins in closed form on training prompts and save a router folder that runs them.

    A skipped layer then runs a linear map of its input instead of nothing, and a repeat keeps a damped
    second pass (see ``drllm.router.stand_ins``). The folder loads wherever routers do
    (``drllm generate --routers``, ``drllm eval --routers``, ``load_routed(routers=...)``).

    Args:
        output: the folder to write (routers, ``stand_ins.safetensors``, a model card).
        model: model name or path; "smollm2-135m-instruct" is the embedded default.
        decisions: a static path such as "1,1,0,2,..." (0 skip, 1 execute, 2 repeat), saved as a ``static``
            router holding exactly that path.
        routers: a router folder instead: a ``static`` one gets maps fitted along its path; input-conditioned
            ones get a map for every layer, fitted on the full model's own states.
        tasks: tasks whose training splits give the calibration prompts, mixed; gold answers unused
            (default ARC-Easy train, MMLU dev, GSM8K train).
        calibration: calibration prompts in all (at least a few times the hidden size in tokens).
        rank: rank of each map (None: full rank, hidden size squared multiply-adds per token).
        repeats: also fit the damped scale of each repeat of a static path (by LM loss).
        ridge: ridge strength, relative to the mean diagonal of the inputs' second moments.
        batch_size: prompts per forward.
        device: where the model runs (auto: CUDA when available, else the CPU).
        dtype: the model's dtype (auto or none: the checkpoint's; float32, bfloat16, float16).
    """
    from drllm.search.output_files import claimed_output, folder_lock

    if (decisions is None) == (routers is None) or (decisions is not None and not decisions.strip()):
        raise ValueError("give either --decisions (a static path) or --routers (a router folder)")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a whole number >= 1 (or None: full rank), got {rank!r}")
    if not 0 <= ridge < float("inf"):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    if isinstance(calibration, bool) or not isinstance(calibration, int) or calibration < 1:
        raise ValueError(f"calibration must be a whole number >= 1, got {calibration!r}")
    if routers is not None and Path(output).resolve() == Path(routers).resolve():
        raise ValueError("--output must be a new folder: the routers' own folder is kept as it is")
    tasks = list(tasks or DEFAULT_TASKS)
    if str(output).strip() and Path(output).is_dir() and any(p.name != LOCK for p in Path(output).iterdir()):
        raise ValueError(
            f"output {output} is not empty: stand-ins are written into a new folder, so that no trained "
            "routers or earlier results are replaced (remove it, or choose another)"
        )
    with claimed_output(output, folder=True), folder_lock(output, LOCK, "drllm stand-ins"):
        if any(p.name != LOCK for p in Path(output).iterdir()):  # another run finished here meanwhile
            raise ValueError(f"output {output} was written by another run meanwhile: choose another folder")
        return _fit(output, model, decisions, routers, tasks, calibration, rank, repeats, ridge, batch_size,
                    device, dtype)  # fmt: skip


def _fit(
    output, model, decisions, routers, tasks, calibration, rank, repeats, ridge, batch_size, device, dtype
):
    """The work of ``fit_stand_ins``, its arguments checked."""
    import torch

    from drllm.router import batch_prompts, encode_prompt, parse_decisions
    from drllm.router.auto import load_with_tokenizer
    from drllm.router.routers import TRAINED_ON_NAME
    from drllm.search.stand_ins import fit_linear_stand_ins, fit_repeat_scales
    from drllm.search.teacher import task_prompts

    routed, tokenizer, name = load_with_tokenizer(model, None, device, routers, "stand-ins", dtype)
    pool = task_prompts(list(tasks), tokenizer, limit=None)
    random.Random(0).shuffle(pool)
    context = routed.context_length
    fits = [p for p in pool if context is None or len(encode_prompt(tokenizer, p.text)) <= context]
    if len(fits) < len(pool):
        log.warning("stand-ins: %d of %d prompts are longer than the model's context of %s tokens and are "
                    "left out", len(pool) - len(fits), len(pool), context)  # fmt: skip
    if not fits:
        raise ValueError(
            f"every prompt of {', '.join(tasks)} is longer than the model's context of {context} tokens: "
            "give --tasks with shorter prompts"
        )
    prompts = [p.text for p in fits[:calibration]]
    if decisions is not None:
        path = parse_decisions(decisions, routed.num_layers)
        routers_obj = routed.add_routers(kind="static")
        with torch.no_grad():
            routers_obj.static.logits.copy_(torch.nn.functional.one_hot(torch.tensor(path), 3) * 20.0 - 10.0)
    elif routed.routers.config.kind == "static":
        ids, mask = batch_prompts(tokenizer, prompts[:1], routed.device)
        path = routed.route(ids, mask)[0].tolist()
    else:
        path = None
    log.info("stand-ins: fitting on %d calibration prompts from %s", len(prompts), ", ".join(tasks))
    stand_ins = fit_linear_stand_ins(
        routed, tokenizer, prompts, path, rank=rank, ridge=ridge, batch_size=batch_size
    )
    if repeats and path is not None and 2 in path:
        fit_repeat_scales(routed, tokenizer, prompts, path, batch_size=batch_size, stand_ins=stand_ins)
    stand_ins.info["calibration_tasks"] = list(tasks)
    routed.set_stand_ins(stand_ins)
    routed.save_pretrained(output)
    if (
        routers is not None and (Path(routers) / TRAINED_ON_NAME).is_file()
    ):  # eval keeps calibrating elsewhere
        shutil.copyfile(Path(routers) / TRAINED_ON_NAME, Path(output) / TRAINED_ON_NAME)
    scales = {i: float(a) for i, a in enumerate(stand_ins.repeat_scale.tolist()) if a != 1.0}
    summary = {
        "model": name,
        "output": str(output),
        "path": path,
        "mapped_layers": stand_ins.mapped,
        "rank": rank,
        "repeat_scales": scales,
        "calibration_prompts": len(prompts),
        "calibration_tokens": stand_ins.info["fitted_on"]["tokens"],
    }
    hint = f"drllm generate --model {name} --routers {output}"
    log.info("stand-ins: saved to %s (load them: %s)", output, hint)
    return summary
