"""style="auto": the better prompt style for the base model on the training split, the same every time."""

import pytest
from tiny_models import tiny_model, tiny_tokenizer

from drllm.router import RoutedModel
from drllm.search.evaluator import PathEvaluator
from drllm.search.tasks import get_task
from drllm.search.tasks.style import describe, resolve_style


def test_auto_measures_both_styles_and_keeps_the_better(mc_file):
    task = get_task(f"jsonl:{mc_file}")
    tok = tiny_tokenizer(chat=True)
    for seed in range(3):
        routed = RoutedModel(tiny_model("llama", seed=seed))
        style, accuracy = resolve_style("auto", routed, tok, task, "mc-letter", examples=8)
        rows = task.load(task.default_split_train, limit=8)
        for candidate in ("plain", "chat"):
            ev = PathEvaluator(routed, tok, task, "mc-letter", candidate)
            rewards = ev.rewards([(p, (1, 1, 1, 1)) for p in ev.prepare(rows)])
            assert accuracy[candidate] == sum(rewards) / len(rewards)
        best = max(accuracy.values())
        assert accuracy[style] == best and (style == "plain" or accuracy["plain"] < best)
        assert resolve_style("auto", routed, tok, task, "mc-letter", examples=8) == (style, accuracy)
        assert style in describe(style, accuracy, "train") and "base accuracy" in describe(
            style, accuracy, "x"
        )


def test_without_a_chat_template_auto_is_plain_and_explicit_styles_pass(mc_file):
    task = get_task(f"jsonl:{mc_file}")
    routed = RoutedModel(tiny_model("llama"))
    assert resolve_style("auto", routed, tiny_tokenizer(), task) == ("plain", {})
    assert resolve_style("chat", routed, tiny_tokenizer(chat=True), task) == ("chat", {})
    with pytest.raises(ValueError, match="unknown prompt style 'fancy'"):
        resolve_style("fancy", routed, tiny_tokenizer(), task)
