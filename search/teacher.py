"""Teacher data without gold: the base model's greedy continuation of each prompt, generated once.

    prompts = task_prompts(["arc_easy", "mmlu:dev", "gsm8k"], tokenizer, limit=400)
    rows = build_teacher(routed, tokenizer, prompts, "runs/kl/teacher", tokens=16)

The folder holds ``teacher.jsonl`` (one row per prompt: ``id``, ``task``, ``prompt``, ``prompt_ids``,
``continuation``: the base model's greedy tokens, cut after the first end-of-sequence) and ``teacher.json``,
the identity it was made with (model fingerprint and weight probe, tokenizer, tokens, prompt format).
``datasets.load_dataset("json", data_files=".../teacher.jsonl")`` loads it. A rerun reuses the rows it
finds and generates only the missing ones (rows are appended and flushed batch by batch, so a killed run
resumes); a folder made with another model, tokenizer, length or prompt format is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from drllm.router import all_execute, batch_prompts, encode_prompt
from drllm.router.atomic import atomic_write_text
from drllm.router.fingerprint import probe_mismatch
from drllm.search.tasks.base import get_task, same_task

ROWS_NAME, META_NAME = "teacher.jsonl", "teacher.json"
_PROBE_TEXT = "Question: which layer can go?\nAnswer: 42"

log = logging.getLogger(__name__)


class TeacherMismatchError(ValueError):
    """A teacher folder was made with another model, tokenizer, length or prompt format."""


@dataclass(frozen=True)
class Prompt:
    """One prompt of the teacher pool (``task`` names where it came from; no gold is kept)."""

    id: str
    task: str
    text: str


def parse_task_split(spec: str, default_split: str | None = None) -> tuple[str, str | None]:
    """``"mmlu:dev"`` -> ``("mmlu", "dev")``; ``"arc_easy"`` -> ``("arc_easy", default_split)``.

    ``jsonl:PATH`` and ``math:<level>`` keep their colon (a split goes after ``@``: ``jsonl:f.jsonl@train``).
    """
    if "@" in spec:
        name, split = spec.rsplit("@", 1)
        return name, split
    if spec.startswith(("jsonl:", "hf:", "math:")) or ":" not in spec:
        return spec, default_split
    name, split = spec.split(":", 1)
    return name, split


def task_prompts(
    tasks: list[str], tokenizer, split: str = "train", limit: int | None = None, data_dir=None
) -> list[Prompt]:
    """Prompts of several tasks mixed in one pool, each in its task's default format (plain style).

    ``tasks`` are task names, optionally with a split (``mmlu:dev``); a task without the requested split
    uses its own training split (MMLU's ``dev``). ``limit`` caps each task's share.
    """
    check_task_list(tasks, split)
    pool: list[Prompt] = []
    for spec in tasks:
        name, chosen = parse_task_split(spec)
        task = get_task(name)
        use = chosen or (split if split in task.splits else task.default_split_train)
        for ex in task.load(use, data_dir=data_dir, limit=limit):
            text = task.prompt(ex, tokenizer, style="plain")
            pool.append(Prompt(f"{task.name}/{ex.id}", task.name, text))
    ids = [p.id for p in pool]
    if len(set(ids)) != len(ids):
        raise ValueError("the teacher pool names one example twice: list each task once")
    return pool


def check_task_list(tasks: list[str], split: str = "train") -> None:
    """Refuse a task list naming one task's split twice, however spelled (``jsonl:a.jsonl,jsonl:./a.jsonl``).

    Its prompts would be taken twice, and land on both sides of a training/validation split.

    Raises:
        ValueError: naming both spellings.
    """
    seen: list[tuple[str, str, str | None]] = []
    for spec in tasks:
        name, chosen = parse_task_split(spec)
        if not name.startswith("hf:"):  # a split left out: the one task_prompts uses (no hub call)
            task = get_task(name)
            chosen = chosen or (split if split in task.splits else task.default_split_train)
        for earlier, earlier_name, earlier_split in seen:
            if earlier_split == chosen and same_task(earlier_name, name):
                raise ValueError(f"tasks name one task twice: {earlier!r} and {spec!r}; list each task once")
        seen.append((spec, name, chosen))


def teacher_identity(routed, tokenizer, tokens: int, prompt_format: str = "plain") -> dict:
    """What a teacher folder must have been made with to be reused."""
    probe = encode_prompt(tokenizer, _PROBE_TEXT)
    return {
        "fingerprint": routed.fingerprint,
        "weight_probe": [round(float(v), 6) for v in routed.weight_probe],
        "tokenizer": f"{type(tokenizer).__name__}:{len(tokenizer)}:"
        + hashlib.sha256(json.dumps(probe).encode()).hexdigest()[:16],
        "tokens": int(tokens),
        "prompt_format": prompt_format,
    }


def build_teacher(
    routed,
    tokenizer,
    prompts: list[Prompt],
    folder: str | os.PathLike,
    tokens: int = 16,
    batch_size: int = 16,
    progress: bool = True,
    rebuild: bool = False,
) -> list[dict]:
    """Generate (or reuse) the base model's greedy continuation of every prompt; the rows in prompt order.

    ``rebuild``: a folder made with another identity is generated again instead of refused.

    Raises:
        ValueError: for ``tokens < 1``.
        TeacherMismatchError: for a folder made with another identity (naming what differs), unless
            ``rebuild``.
    """
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"tokens must be a whole number >= 1, got {tokens!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    identity = teacher_identity(routed, tokenizer, tokens)
    _check_identity(folder / META_NAME, identity, rebuild)
    done = _read_rows(folder / ROWS_NAME)
    # a row is reused only for the same prompt text: an example edited under the same id is generated again
    missing = [p for p in prompts if p.id not in done or done[p.id].get("prompt") != p.text]
    context = routed.context_length
    with open(folder / ROWS_NAME, "a") as out:
        bar = tqdm(total=len(missing), desc="teacher continuations", disable=not progress, unit="prompt")
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            for row in _generate(routed, tokenizer, chunk, tokens, context):
                out.write(json.dumps(row) + "\n")
                done[row["id"]] = row
            out.flush()
            os.fsync(out.fileno())
            bar.update(len(chunk))
        bar.close()
    return [done[p.id] for p in prompts]


@torch.no_grad()
def _generate(routed, tokenizer, chunk: list[Prompt], tokens: int, context: int | None) -> list[dict]:
    for p in chunk:
        length = len(encode_prompt(tokenizer, p.text))
        if context is not None and length + tokens > context:
            raise ValueError(
                f"prompt {p.id} has {length} tokens; with {tokens} new tokens it passes the model's "
                f"context of {context}"
            )
    ids, mask = batch_prompts(tokenizer, [p.text for p in chunk], routed.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = routed.generate(
        ids,
        attention_mask=mask,
        decisions=all_execute(routed.num_layers),
        max_new_tokens=tokens,
        do_sample=False,
        pad_token_id=pad,
    )
    eos = tokenizer.eos_token_id
    rows = []
    for r, p in enumerate(chunk):
        new = out[r, ids.shape[1] :].tolist()
        if eos is not None and eos in new:
            new = new[: new.index(eos) + 1]
        prompt_ids = ids[r][mask[r].bool()].tolist()
        rows.append(
            {"id": p.id, "task": p.task, "prompt": p.text, "prompt_ids": prompt_ids, "continuation": new}
        )
    return rows


def _check_identity(path: Path, identity: dict, rebuild: bool = False) -> None:
    if not path.exists():
        atomic_write_text(path, json.dumps(identity, indent=2) + "\n")
        return
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        if not rebuild:
            raise ValueError(
                f"{path} is not valid JSON ({err}); remove the teacher folder to regenerate"
            ) from err
        saved = {}

    def same(key) -> bool:  # a probe saved before every layer was probed is compared where it reaches
        old = saved.get(key)
        if key == "weight_probe" and isinstance(old, list):
            return not probe_mismatch(old, identity[key])
        return old == identity[key]

    differ = sorted(k for k in identity if not same(k))
    if differ and rebuild:
        log.warning("%s was made with another %s: generating it again", path.parent, ", ".join(differ))
        (path.parent / ROWS_NAME).unlink(missing_ok=True)
        atomic_write_text(path, json.dumps(identity, indent=2) + "\n")
    elif differ:
        raise TeacherMismatchError(
            f"{path.parent} holds teacher data made with another {', '.join(differ)} "
            f"(saved {[saved.get(k) for k in differ]}, now {[identity[k] for k in differ]}); "
            "use another folder or remove it"
        )


def _read_rows(path: Path) -> dict[str, dict]:
    """The complete rows of a teacher file by id (a torn last line from a killed run is dropped)."""
    if not path.exists():
        return {}
    rows: dict[str, dict] = {}
    lines = path.read_text().split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the last line, without its newline: a killed write
                break
            raise ValueError(f"{path} line {number} is not valid JSON") from None
        rows[row["id"]] = row
    if lines and lines[-1].strip():  # rewrite without the torn line so appends start on a new line
        good = "".join(json.dumps(r) + "\n" for r in rows.values())
        atomic_write_text(path, good)
    return rows
