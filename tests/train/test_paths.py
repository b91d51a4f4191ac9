"""Tests of the search-output reader: every refusal names the file and the line."""

import json

import pytest

from drllm.train.paths import read_paths


def _row(i, decisions=(1, 1, 1, 1), **extra):
    return {
        "id": f"ex{i}",
        "task": "t",
        "model": "m",
        "prompt": f"question {i}",
        "target": "a",
        "decisions": list(decisions),
        "layers": sum(decisions),
        "reward": 1.0,
        "base_reward": 0.0,
        "correct_paths": [],
        "simulations": 3,
        **extra,
    }


def _write(tmp_path, lines, newline_at_end=True):
    path = tmp_path / "paths.jsonl"
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + ("\n" if newline_at_end else ""))
    return path


def test_reads_rows_in_order(tmp_path):
    path = _write(tmp_path, [_row(0), "", _row(1, (0, 2, 1, 1))])
    rows = read_paths(path, num_layers=4)
    assert [r["id"] for r in rows] == ["ex0", "ex1"]
    assert rows[1]["decisions"] == [0, 2, 1, 1]


def test_ids_become_strings(tmp_path):
    row = _row(0)
    row["id"] = 17
    assert read_paths(_write(tmp_path, [row]))[0]["id"] == "17"


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "line 2: malformed JSON"),
        ({"id": "x", "decisions": [1, 1, 1, 1]}, "line 2: missing key(s) ['prompt']"),
        (_row(5, (1, 3, 1, 1)), "line 2: decisions must hold only 0"),
        (_row(5, (1, True, 1, 1)), "line 2: decisions must hold only 0"),
        ({**_row(5), "decisions": "1111"}, "line 2: decisions must be a non-empty list"),
        (_row(5, (1, 1, 1)), "line 2: decisions has 3 values, the model has 4 layers"),
        (_row(0), "line 2: duplicate id 'ex0'"),
        ([1, 2], "line 2: expected a JSON object"),
    ],
)
def test_refusals_name_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path, [_row(0), bad, _row(9)])
    with pytest.raises(ValueError) as err:
        read_paths(path, num_layers=4)
    assert "paths.jsonl" in str(err.value) and message in str(err.value)


def test_torn_last_line_is_dropped_with_a_warning(tmp_path):
    path = _write(tmp_path, [_row(0), _row(1), '{"id": "ex2", "prom'], newline_at_end=False)
    with pytest.warns(UserWarning, match="line 3: dropping a torn last line"):
        rows = read_paths(path, num_layers=4)
    assert [r["id"] for r in rows] == ["ex0", "ex1"]


def test_last_line_without_newline_but_valid_is_kept(tmp_path):
    path = _write(tmp_path, [_row(0), _row(1)], newline_at_end=False)
    assert len(read_paths(path)) == 2


def test_malformed_last_line_with_newline_is_refused(tmp_path):
    path = _write(tmp_path, [_row(0), '{"id": "ex2", "prom'])
    with pytest.raises(ValueError, match="line 2: malformed JSON"):
        read_paths(path)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "paths.jsonl"
    path.write_text("\n")
    with pytest.raises(ValueError, match="paths.jsonl holds no rows"):
        read_paths(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_paths(tmp_path / "nope.jsonl")
