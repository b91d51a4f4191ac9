"""Gold answers for the teacher pool: the answer options of its multiple-choice prompts, as token ids.

    gold = gold_options(["arc_easy", "mmlu:dev", "gsm8k"], tokenizer)
    gold["arc_easy/Mercury_7057260"]   # {"options": [[ids of " option A"], ...], "gold": 2}

Keys are the teacher rows' ids (``task/id``, as ``task_prompts`` makes them). Options are the plain
``mc-loglik`` continuations (a space, then the option text), tokenized alone as ``drllm eval`` does, so the
task loss ``train --objective kl --gold-weight`` adds is the cross-entropy of the same option scores that eval
compares. Tasks without options (exact answers, prompts only) give no entry: their prompts keep the KL alone.
"""

from __future__ import annotations

from .tasks import get_task
from .teacher import parse_task_split


def gold_options(
    tasks: list[str], tokenizer, split: str = "train", limit: int | None = None, data_dir=None
) -> dict[str, dict]:
    """``{row id: {"options": [token ids per option], "gold": index}}`` for the choice tasks of ``tasks``.

    Examples are read exactly as ``task_prompts`` reads them (the same split and ``limit``), so every key
    is a teacher row's id. An example whose options encode to no tokens or to the same tokens is left out.
    """
    out: dict[str, dict] = {}
    for spec in tasks:
        name, chosen = parse_task_split(spec)
        task = get_task(name)
        if task.kind != "choice" or not task.has_gold:
            continue
        use = chosen or (split if split in task.splits else task.default_split_train)
        for ex in task.load(use, data_dir=data_dir, limit=limit):
            texts = task.continuations(ex, "mc-loglik", style="plain")
            options = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
            distinct = len({tuple(o) for o in options}) == len(options)
            if distinct and all(options):
                out[f"{task.name}/{ex.id}"] = {"options": options, "gold": int(ex.answer)}
    return out
