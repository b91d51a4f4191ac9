"""Tests for drllm.search.tasks: loading the shared benchmark files, jsonl tasks, prompts, grading."""

import csv
import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from drllm.search.tasks import KNOWN_TASKS, Example, get_task, resolve_data_dir
from drllm.search.tasks import base as tasks_module

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch):
    """Never reach for the hub: offline it takes about 25 s to fail."""
    monkeypatch.setenv("DRLLM_NO_HUB", "1")


def _data_dir() -> Path:
    if not (DATA / "MANIFEST.tsv").is_file():
        pytest.skip(f"benchmark data not found at {DATA}")
    return DATA


def _manifest_rows(relative: str) -> int:
    with (_data_dir() / "MANIFEST.tsv").open() as handle:
        rows = {row["path"]: row["rows"] for row in csv.DictReader(handle, delimiter="\t")}
    return int(rows[relative])


def _tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    if chat:
        tok.chat_template = CHATML
    return tok


@pytest.mark.parametrize(
    ("name", "split", "relative", "repeated_options"),
    [
        ("arc_easy", "train", "arc/ARC-Easy/train.jsonl", 0),
        ("arc_easy", "validation", "arc/ARC-Easy/validation.jsonl", 0),
        ("arc_challenge", "train", "arc/ARC-Challenge/train.jsonl", 0),
        ("arc_challenge", "validation", "arc/ARC-Challenge/validation.jsonl", 0),
        ("mmlu", "dev", "mmlu/dev.jsonl", 1),
        ("mmlu", "validation", "mmlu/validation.jsonl", 3),
    ],
)
def test_choice_tasks_load_every_row(name, split, relative, repeated_options):
    """Every released row loads, but the few whose options repeat (the gold one could never win)."""
    examples = get_task(name).load(split, data_dir=_data_dir())
    assert len(examples) == _manifest_rows(relative) - repeated_options
    assert len({ex.id for ex in examples}) == len(examples)
    for ex in examples:
        assert len(ex.choices) == len(ex.labels) >= 3
        assert 0 <= ex.answer < len(ex.choices)


def test_arc_numeric_labels_are_kept():
    examples = get_task("arc_easy").load("train", data_dir=_data_dir())
    numeric = [ex for ex in examples if ex.labels[0] == "1"]
    assert numeric, "ARC-Easy train holds NYSEDREGENTS items labelled 1-4"
    task = get_task("arc_easy")
    ex = numeric[0]
    gold_label = ex.labels[ex.answer]
    assert task.continuations(ex, "mc-letter") == [f" {label}" for label in ex.labels]
    assert task.target(ex, "mc-letter") == f" {gold_label}"
    assert task.grade(ex, f"({gold_label})")


def test_heldout_splits_partition_the_train_file():
    task = get_task("gsm8k")
    train = task.load("train", data_dir=_data_dir())
    valid = task.load("validation", data_dir=_data_dir())
    assert len(train) + len(valid) == _manifest_rows("gsm8k/train.jsonl")
    assert not {ex.id for ex in train} & {ex.id for ex in valid}
    assert 0.07 < len(valid) / (len(train) + len(valid)) < 0.13
    assert all(ex.answer and "," not in ex.answer and "#" not in ex.answer for ex in train)
    assert valid == task.load("validation", data_dir=_data_dir())


def test_math_levels_and_null_answers():
    everything = get_task("math").load("all", data_dir=_data_dir())
    assert len(everything) == _manifest_rows("math/train.jsonl") - 2  # two rows have no answer
    by_level = [get_task(f"math:{n}").load("all", data_dir=_data_dir()) for n in range(1, 6)]
    assert sum(len(rows) for rows in by_level) == len(everything) - 2  # two rows are "Level ?"
    for level, rows in enumerate(by_level, start=1):
        assert {ex.meta["level"] for ex in rows} == {level}
    assert len({ex.id for ex in everything}) == len(everything)


def test_limit_and_default_eval_split():
    from drllm.search.tasks.builtin import BUILDERS

    assert set(BUILDERS) == set(KNOWN_TASKS)
    assert get_task("mmlu").default_split_train == "dev" and get_task("gsm8k").default_split_train == "train"
    for name in KNOWN_TASKS:
        task = get_task(name)
        assert task.default_split_eval in task.splits
        assert task.default_scoring == task.scorings[0]
    assert len(get_task("mmlu").load("dev", data_dir=_data_dir(), limit=7)) == 7


def test_unknown_task_and_split_errors():
    with pytest.raises(ValueError, match="arc_easy.*gsm8k"):
        get_task("arc_hard")
    with pytest.raises(ValueError, match="validation"):
        get_task("gsm8k").load("test")
    with pytest.raises(ValueError, match="dev"):
        get_task("mmlu").load("train")


def test_missing_data_dir_names_every_place(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        get_task("arc_easy").load("train", data_dir=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "arc" / "ARC-Easy" / "train.jsonl") in str(err.value)
    assert "hub" in str(err.value)
    monkeypatch.delenv("DRLLM_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tasks_module, "_PROJECT_DATA", tmp_path / "also-missing")
    with pytest.raises(FileNotFoundError) as err:
        get_task("math").load("train")
    assert str(tmp_path.parent / "shared" / "data" / "math" / "train.jsonl") in str(err.value)
    assert str(tmp_path / "also-missing" / "math" / "train.jsonl") in str(err.value)


def test_resolve_data_dir_order(tmp_path, monkeypatch):
    assert resolve_data_dir(tmp_path) == tmp_path
    monkeypatch.setenv("DRLLM_DATA", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"


def _write(path: Path, lines: list) -> str:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return f"jsonl:{path}"


def test_jsonl_exact_and_choice_rows(tmp_path):
    exact = get_task(_write(tmp_path / "e.jsonl", [{"id": "a", "prompt": "2+2=", "target": " 4"}, ""]))
    assert exact.kind == "exact"
    (ex,) = exact.load()
    assert exact.prompt(ex) == "2+2=" and exact.target(ex) == " 4"
    assert exact.grade(ex, "4.")
    rows = [
        {"id": "q1", "question": "Sky?", "choices": ["blue", "red"], "answer": 0},
        {"id": "q2", "question": "Grass?", "choices": ["blue", "green"], "answer": "B"},
        {"id": "q3", "question": "Sun?", "choices": ["hot", "cold"], "answer": "y", "labels": ["x", "y"]},
    ]
    choice = get_task(_write(tmp_path / "c.jsonl", rows))
    assert choice.kind == "choice"
    assert [ex.answer for ex in choice.load(limit=5)] == [0, 1, 1]
    assert choice.load()[2].labels == ("x", "y")


@pytest.mark.parametrize(
    ("second", "problem"),
    [
        ("{not json", "invalid JSON"),
        ({"id": "b", "question": "q", "choices": ["x", "y"]}, "missing key"),
        ({"id": "b", "question": "q", "choices": ["x", "y"], "answer": 2}, "out of range"),
        ({"id": "b", "question": "q", "choices": ["x", "y"], "answer": "C"}, "labels"),
        ({"id": "b", "question": "q", "choices": "xy", "answer": 0}, "choices"),
        ({"id": "a", "question": "q", "choices": ["x", "y"], "answer": 0}, "duplicate id"),
        ("[1, 2]", "JSON object"),
        ({"id": "b", "question": "q", "choices": ["x", "y"], "answer": 0, "prompt": "p"}, "mixes exact"),
    ],
)
def test_jsonl_malformed_rows_name_the_line(tmp_path, second, problem):
    first = {"id": "a", "question": "q", "choices": ["x", "y"], "answer": 0}
    name = _write(tmp_path / "bad.jsonl", [first, second])
    with pytest.raises(ValueError, match=f"bad.jsonl line 2: .*{problem}"):
        get_task(name).load(strict=True)


def test_jsonl_exact_rows_need_a_target_with_text_and_one_kind_of_keys(tmp_path):
    """A blank target would make every path "right" or none; a row of both kinds would lose one silently."""
    first = {"id": "a", "prompt": "2+2=", "target": "4"}
    for blank in ("", "   \n"):
        name = _write(tmp_path / "blank.jsonl", [first, {"id": "b", "prompt": "3+3=", "target": blank}])
        with pytest.raises(ValueError, match="blank.jsonl line 2: the target is blank"):
            get_task(name).load(strict=True)
    both = {
        "id": "a",
        "prompt": "2+2=",
        "target": "4",
        "question": "2+2?",
        "choices": ["4", "5"],
        "answer": 0,
    }
    with pytest.raises(ValueError, match=r"line 1: the row mixes exact-answer keys \['prompt', 'target'\]"):
        get_task(_write(tmp_path / "both.jsonl", [both]))


def test_jsonl_empty_unknown_kind_and_missing(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl is empty"):
        get_task(f"jsonl:{tmp_path / 'empty.jsonl'}")
    with pytest.raises(ValueError, match="line 1: cannot tell"):
        get_task(_write(tmp_path / "odd.jsonl", [{"id": "a", "text": "x"}]))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        get_task(f"jsonl:{tmp_path / 'nope.jsonl'}")


ARC_EX = Example("e1", "Which is a gas?", ("rock", "steam", "ice"), 1, ("A", "B", "C"))
MATH_EX = Example("m1", "What is 1/2 + 1/2?", answer="1")


def test_plain_prompts():
    task = get_task("arc_easy")
    assert task.prompt(ARC_EX) == "Question: Which is a gas?\nAnswer:"
    assert task.continuations(ARC_EX, "mc-loglik") == [" rock", " steam", " ice"]
    assert task.target(ARC_EX) == " steam"
    letter = task.prompt(ARC_EX, scoring="mc-letter")
    assert letter == "Question: Which is a gas?\nA. rock\nB. steam\nC. ice\nAnswer:"
    math = get_task("math")
    assert math.prompt(MATH_EX) == "Question: What is 1/2 + 1/2?\nAnswer:"
    assert math.target(MATH_EX) == " 1"
    with pytest.raises(ValueError, match="scoring"):
        task.prompt(ARC_EX, scoring="generate")


def test_mmlu_prompt_names_subject():
    ex = Example("m", "2+2?", ("1", "2", "3", "4"), 3, ("A", "B", "C", "D"), {"subject": "high_school_math"})
    assert get_task("mmlu").prompt(ex).startswith("The following is a question about high school math.\n")


def test_chat_prompts_and_fallback():
    tok = _tokenizer()
    task = get_task("arc_easy")
    chat = task.prompt(ARC_EX, tok, style="chat", scoring="mc-letter")
    assert chat.startswith("<|im_start|>user\nWhich is a gas?\n\nA. rock")
    assert chat.endswith("<|im_start|>assistant\n")
    assert task.continuations(ARC_EX, "mc-letter", style="chat", tokenizer=tok) == ["A", "B", "C"]
    math = get_task("gsm8k")
    assert "final answer" in math.prompt(MATH_EX, tok, style="chat")
    assert math.target(MATH_EX, style="chat", tokenizer=tok) == "1"
    plain_tok = _tokenizer(chat=False)
    assert task.prompt(ARC_EX, plain_tok, style="chat") == task.prompt(ARC_EX)
    assert math.target(MATH_EX, style="chat", tokenizer=plain_tok) == " 1"
    with pytest.raises(ValueError, match="style"):
        task.prompt(ARC_EX, tok, style="fancy")


def test_grading_through_tasks():
    arc = get_task("arc_easy")
    assert arc.grade(ARC_EX, " B") and arc.grade(ARC_EX, " steam rises") and not arc.grade(ARC_EX, "C")
    math = get_task("math")
    assert math.grade(MATH_EX, r"so $\boxed{1}$") and not math.grade(MATH_EX, r"\boxed{2}")


def test_jsonl_refuses_a_split_it_does_not_have(tmp_path):
    """A jsonl file is one split: ``--split validation`` would evaluate and calibrate on the same rows."""
    task = get_task(_write(tmp_path / "one.jsonl", [{"id": "a", "prompt": "2+2=", "target": " 4"}]))
    assert len(task.load("all")) == 1
    with pytest.raises(ValueError, match="one.jsonl.*no split 'validation'"):
        task.load("validation")
