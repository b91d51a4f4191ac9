"""Bad task rows and search arguments are refused in one line naming the file, line, example or value."""

import json

import pytest
from task_files import choice_file, exact_file
from tiny_models import tiny_model, tiny_tokenizer

from drllm.router import RoutedModel
from drllm.search.records import read_records
from drllm.search.runner import run_search
from drllm.search.tasks import get_task
from drllm.search.tasks.base import MAX_ROW_BYTES

GOOD_CHOICE = {"id": "a", "question": "which?", "choices": ["x", "y", "z"], "answer": 0}
GOOD_EXACT = {"id": "a", "prompt": "add 1 and 1:", "target": " 2"}


def _task_file(tmp_path, first, second):
    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n")
    return f"jsonl:{path}"


@pytest.mark.parametrize(
    "second, message",
    [
        (
            {**GOOD_CHOICE, "id": "b", "choices": ["x", "y", "x"]},
            "example 'b' repeats the choice 'x' (options 0 and 2)",
        ),
        (
            {**GOOD_CHOICE, "id": "b", "labels": ["A", "B", "A"]},
            "example 'b' repeats the label 'A' (options 0 and 2)",
        ),
        ({**GOOD_CHOICE, "id": None}, "id must be a non-empty string or an integer, got None"),
        ({**GOOD_CHOICE, "id": ""}, "id must be a non-empty string or an integer, got ''"),
        ({**GOOD_CHOICE, "id": [1]}, "id must be a non-empty string or an integer, got [1]"),
        ({**GOOD_CHOICE, "id": "b", "question": "  "}, "example 'b' has an empty question"),
        ({**GOOD_EXACT, "id": "b", "prompt": ""}, "example 'b' has an empty question"),
        ({**GOOD_EXACT, "id": None}, "id must be a non-empty string or an integer, got None"),
    ],
)
def test_bad_rows_are_refused_naming_file_line_and_value(tmp_path, second, message):
    first = GOOD_CHOICE if "choices" in second else GOOD_EXACT
    task = get_task(_task_file(tmp_path, first, second))
    with pytest.raises(ValueError) as err:
        task.load(strict=True)
    assert message in str(err.value)
    assert str(err.value).startswith(f"{tmp_path / 'task.jsonl'} line 2: ") and "\n" not in str(err.value)


def test_hub_rows_with_repeated_options_or_empty_questions_are_refused(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    rows = [
        {"q": "pick", "opts": ["red", "blue"], "gold": 0},
        {"q": "pick", "opts": ["red", "red"], "gold": 1},
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task(f"hf:{folder}", question_field="q", answer_field="gold", choices_field="opts")
    with pytest.raises(ValueError, match="row 1: example '.*-train-1' repeats the choice 'red'"):
        task.load("train", strict=True)
    (folder / "train.jsonl").write_text(json.dumps({"q": "", "opts": ["a", "b"], "gold": 0}) + "\n")
    with pytest.raises(ValueError, match="row 0: example .* has an empty question"):
        task.load("train", strict=True)


def test_invalid_utf8_names_the_file_and_line(tmp_path):
    task_path = tmp_path / "task.jsonl"
    task_path.write_bytes(json.dumps(GOOD_EXACT).encode() + b"\n" + b'{"id": "b", "prompt": "\xff\xfe"}\n')
    with pytest.raises(ValueError, match=f"{task_path} line 2: not UTF-8 text"):
        get_task(f"jsonl:{task_path}").load(strict=True)
    paths = tmp_path / "paths.jsonl"
    row = {"id": "a", "prompt": "p", "decisions": [1, 1, 1, 1]}
    paths.write_bytes(
        json.dumps(row).encode() + b"\n" + b'{"id": "\xff"}\n' + json.dumps(row).encode() + b"\n"
    )
    with pytest.raises(ValueError, match=f"{paths} line 2: .*utf-8"):
        read_records(paths)


def test_a_huge_line_is_refused_by_its_length(tmp_path):
    path = tmp_path / "task.jsonl"
    huge = {"id": "b", "prompt": "x" * (MAX_ROW_BYTES + 10), "target": " 1"}
    path.write_text(json.dumps(GOOD_EXACT) + "\n" + json.dumps(huge) + "\n")
    with pytest.raises(ValueError, match=f"{path} line 2: longer than {MAX_ROW_BYTES} bytes"):
        get_task(f"jsonl:{path}").load(strict=True)


def test_a_negative_limit_is_refused(tmp_path):
    task = get_task(choice_file(tmp_path / "mc.jsonl", n=4))
    assert len(task.load(limit=3)) == 3
    with pytest.raises(ValueError, match="limit must be a whole number >= 0 .*got -1"):
        task.load(limit=-1)
    with pytest.raises(ValueError, match="limit must be a whole number >= 0 .*got -1"):
        get_task("arc_easy").load("train", limit=-1)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"limit": -1}, "limit must be a whole number >= 1, got -1"),
        ({"limit": 0}, "limit must be a whole number >= 1, got 0"),
        ({"simulations": 0}, "simulations must be a whole number >= 1, got 0"),
        ({"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
        ({"seed": -1}, r"seed must be a whole number in \[0, 2\*\*32\), got -1"),
    ],
)
def test_search_refuses_bad_counts(tmp_path, changes, message):
    task = choice_file(tmp_path / "mc.jsonl", n=4)
    with pytest.raises(ValueError, match=message):
        run_search("no-model-is-loaded", task, str(tmp_path / "paths.jsonl"), **changes)
    assert not (tmp_path / "paths.jsonl").exists()


def test_search_into_its_own_task_file_is_refused(tmp_path):
    path = tmp_path / "tasks.jsonl"
    task = exact_file(path, n=3)
    before = path.read_bytes()
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    with pytest.raises(ValueError, match=f"output {path} is the task file of '{task}'"):
        run_search(routed, task, str(path), tokenizer=tiny_tokenizer(), simulations=2)
    assert path.read_bytes() == before


def _file_with_bad_rows(tmp_path):
    """Five lines: good, empty question, not JSON, repeated option, good."""
    rows = [
        json.dumps({**GOOD_CHOICE, "id": "a"}),
        json.dumps({**GOOD_CHOICE, "id": "b", "question": ""}),
        "{not json",
        json.dumps({**GOOD_CHOICE, "id": "d", "choices": ["x", "y", "x"]}),
        json.dumps({**GOOD_CHOICE, "id": "e", "question": "and which?"}),
    ]
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_bad_rows_are_skipped_with_a_warning_naming_each_unless_strict(tmp_path, caplog):
    path = _file_with_bad_rows(tmp_path)
    task = get_task(f"jsonl:{path}")
    with caplog.at_level("WARNING"):
        kept = task.load()
    assert [ex.id for ex in kept] == ["a", "e"]
    warned = caplog.text
    assert f"{path} line 2: example 'b' has an empty question" in warned
    assert f"{path} line 3: invalid JSON" in warned
    assert f"{path} line 4: example 'd' repeats the choice 'x'" in warned
    assert f"{path}: skipped 3 bad row(s), kept 2" in warned
    with pytest.raises(ValueError, match=f"^{path} line 2: example 'b' has an empty question"):
        task.load(strict=True)


def test_a_file_with_no_usable_row_is_refused(tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_text(
        json.dumps(GOOD_EXACT) + "\n" + json.dumps({**GOOD_EXACT, "id": "b", "prompt": ""}) + "\n"
    )
    path.write_text(json.dumps({**GOOD_EXACT, "prompt": " "}) + "\n")
    with pytest.raises(ValueError, match=f"^{path}: no usable row; the first problem: .*empty question"):
        get_task(f"jsonl:{path}").load()


def test_builtin_mmlu_rows_with_repeated_options_are_skipped_by_name(caplog):
    task = get_task("mmlu")
    with caplog.at_level("WARNING"):
        kept = task.load("validation")
    bad = "mmlu-elementary_mathematics-validation-261"
    assert bad not in {ex.id for ex in kept} and len(kept) == 1528
    with pytest.raises(ValueError, match=f"row 261: example '{bad}' repeats the choice '12'"):
        task.load("validation", strict=True)


def test_search_skips_a_bad_row_naming_it_and_searches_the_rest(tmp_path, caplog):
    path = _file_with_bad_rows(tmp_path)
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    output = tmp_path / "paths.jsonl"
    with caplog.at_level("WARNING"):
        summary = run_search(routed, f"jsonl:{path}", str(output), tokenizer=tiny_tokenizer(), simulations=2)
    assert summary["examples"] == 2
    assert [r.id for r in read_records(output)] == ["a", "e"]
    assert "example 'b' has an empty question" in caplog.text
    with pytest.raises(ValueError, match="line 2: example 'b' has an empty question"):
        run_search(
            routed,
            f"jsonl:{path}",
            str(tmp_path / "strict.jsonl"),
            tokenizer=tiny_tokenizer(),
            simulations=2,
            strict=True,
        )
    assert not (tmp_path / "strict.jsonl").exists()
