"""hf:DATASET tasks with a column mapping, on a local dataset folder (the hub is offline here)."""

import json

import pytest

from drllm.cli.__main__ import main
from drllm.search.tasks import get_task


@pytest.fixture
def dataset_dir(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    rows = [
        {"q": f"pick {w}", "opts": ["red", "blue", w], "gold": g, "sol": f"{k}"}
        for k, (w, g) in enumerate([("green", "C"), ("cyan", 2), ("pink", "pink"), ("gold", "C")])
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_choice_mapping(dataset_dir):
    task = get_task(f"hf:{dataset_dir}", question_field="q", answer_field="gold", choices_field="opts")
    examples = task.load("train")
    assert task.kind == "choice" and len(examples) == 4
    assert [ex.answer for ex in examples] == [2, 2, 2, 2]
    assert examples[0].question == "pick green" and examples[0].labels == ("A", "B", "C")


def test_exact_mapping_and_errors(dataset_dir):
    task = get_task(f"hf:{dataset_dir}", question_field="q", answer_field="sol")
    assert task.kind == "exact" and [ex.answer for ex in task.load("train", limit=2)] == ["0", "1"]
    with pytest.raises(ValueError, match="no column 'question'"):
        get_task(f"hf:{dataset_dir}").load("train")
    with pytest.raises(FileNotFoundError, match="could not load dataset"):
        get_task(f"hf:{dataset_dir / 'nope'}").load("train")
    blank = get_task(f"hf:{dataset_dir}", question_field="q", answer_field="q")
    (dataset_dir / "train.jsonl").write_text(json.dumps({"q": "  "}) + "\n" + json.dumps({"q": "x"}) + "\n")
    with pytest.raises(ValueError, match="row 0: the answer is blank"):
        blank.load("train", strict=True)


def test_search_accepts_a_mapped_dataset(dataset_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "paths.jsonl"
    main(
        [
            "search",
            "--model",
            tiny_model_dir,
            "--task",
            f"hf:{dataset_dir}",
            "--output",
            str(out),
            "--question-field",
            "q",
            "--answer-field",
            "gold",
            "--choices-field",
            "opts",
            "--simulations",
            "3",
        ]
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and all(r["prompt"].startswith("Question: pick") for r in rows)
