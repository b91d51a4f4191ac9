"""Choosing a task's prompt style on its training split.

Prompt format changes what a small model can do (SmolLM2-135M-Instruct is far better on ARC-Easy with a
plain cloze prompt than with its chat template), so ``style="auto"`` measures the base model's accuracy
in each style on the first examples of the training split and keeps the better one (ties: plain).
The choice depends only on the model, the task, the scoring and those examples, so search and evaluation
make the same choice.
"""

from __future__ import annotations

from drllm.router import RoutedModel

from ..evaluator import PathEvaluator
from .base import STYLES

CHOICES = ("auto", *STYLES)


def resolve_style(
    style: str,
    routed: RoutedModel,
    tokenizer,
    task,
    scoring: str | None = None,
    data_dir=None,
    examples: int = 64,
    max_new_tokens: int = 32,
) -> tuple[str, dict[str, float]]:
    """The prompt style to use, and the base accuracies it was chosen on (empty unless measured).

    Args:
        style: "auto", "plain" or "chat"; only "auto" is resolved.
        routed: the model (its routers are not used: every layer executes).
        tokenizer: its tokenizer; without a chat template "auto" is "plain".
        task: the task (a :class:`~drllm.search.tasks.Task`).
        scoring: the scoring that search or evaluation will use (default: the task's).
        data_dir: benchmark data folder.
        examples: training-split examples to measure on.
        max_new_tokens: decoding budget of the ``generate`` scoring.

    Raises:
        ValueError: If the style is unknown.
    """
    if style not in CHOICES:
        raise ValueError(f"unknown prompt style {style!r}; expected one of {CHOICES}")
    if style == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "style 'chat' needs a tokenizer with a chat template, and this one has none; use plain"
        )
    if style != "auto":
        return style, {}
    if not getattr(tokenizer, "chat_template", None) or not task.has_gold:  # prompts only: as written
        return "plain", {}
    rows = task.load(task.default_split_train, data_dir=data_dir, limit=examples, strict=False)
    everything = (1,) * routed.num_layers
    accuracy = {}
    for candidate in STYLES:
        ev = PathEvaluator(routed, tokenizer, task, scoring, candidate, max_new_tokens=max_new_tokens)
        rewards = ev.rewards([(p, everything) for p in ev.prepare(rows)])
        accuracy[candidate] = sum(r >= 1.0 for r in rewards) / max(len(rewards), 1)
    best = max(STYLES, key=lambda s: (accuracy[s], s == "plain"))
    return best, accuracy


def describe(style: str, accuracy: dict[str, float], split: str) -> str:
    """One line saying which style was chosen and why."""
    if not accuracy:
        return f"prompt style: {style}"
    measured = ", ".join(f"{k} {v:.0%}" for k, v in accuracy.items())
    return f"prompt style: {style} (base accuracy on the {split} split: {measured})"
