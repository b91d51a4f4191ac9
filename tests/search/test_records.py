"""Search records: one dataclass, one reader that names the file and line of every refusal."""

import dataclasses
import json

import pytest

from drllm.search.records import SearchOutput, SearchRecord, read_records, validate_path


def _row(i, decisions=(1, 1, 1, 1), **extra):
    """A row as the first search versions wrote it (no evaluations, scoring, style, num_layers)."""
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


def _record(**changes):
    fields = {
        "id": "q7",
        "task": "arc_easy",
        "model": "tiny",
        "prompt": "Question: é?\nAnswer:",
        "target": " B",
        "decisions": [1, 0, 2, 1],
        "reward": 1.0,
        "base_reward": 0.0,
        "correct_paths": [[1, 0, 2, 1], [1, 1, 1, 1]],
        "simulations": 9,
        "evaluations": 7,
        "scoring": "mc-loglik",
        "style": "chat",
        "num_layers": 4,
    }
    return SearchRecord(**{**fields, **changes})


def test_reads_rows_in_order(tmp_path):
    path = _write(tmp_path, [_row(0), "", _row(1, (0, 2, 1, 1))])
    records = read_records(path, num_layers=4)
    assert [r.id for r in records] == ["ex0", "ex1"]
    assert records[1].decisions == [0, 2, 1, 1]


def test_ids_become_strings(tmp_path):
    row = _row(0)
    row["id"] = 17
    assert read_records(_write(tmp_path, [row]))[0].id == "17"


def test_record_round_trips_through_a_line():
    record = _record()
    line = record.to_json()
    names = [f.name for f in dataclasses.fields(SearchRecord) if f.name != "extra"]
    assert "\n" not in line and list(json.loads(line)) == names
    assert SearchRecord.from_dict(json.loads(line)) == record
    assert record.layers == 4  # sum(decisions), computed when not given


def test_an_old_format_row_loads_with_defaults(tmp_path):
    (record,) = read_records(_write(tmp_path, [_row(0, (1, 0, 1, 1))]), num_layers=4)
    assert (record.task, record.layers, record.reward, record.simulations) == ("t", 3, 1.0, 3)
    assert (record.evaluations, record.scoring, record.style, record.num_layers) == (0, None, None, None)
    assert record.extra == {}


def test_a_row_with_only_id_prompt_and_decisions_loads(tmp_path):
    (record,) = read_records(_write(tmp_path, [{"id": "a", "prompt": "p", "decisions": [2, 1]}]))
    assert (record.layers, record.reward, record.correct_paths, record.task) == (3, None, [], "")


def test_unknown_keys_survive_a_round_trip_through_the_writer(tmp_path):
    source = _write(tmp_path, [_row(0, confidence=0.75, notes={"by": "hand"}, extra=[1])])
    (record,) = read_records(source)
    assert record.extra == {"confidence": 0.75, "notes": {"by": "hand"}, "extra": [1]}
    copy = tmp_path / "copy.jsonl"
    with SearchOutput(copy) as out:
        out.write(record)
    assert read_records(copy) == [record]
    assert json.loads(copy.read_text())["notes"] == {"by": "hand"}


def test_datasets_loads_the_written_file(tmp_path):
    from datasets import load_dataset

    out = tmp_path / "o.jsonl"
    with SearchOutput(out) as writer:
        writer.write(_record(id="a"))
        writer.write(_record(id="b", decisions=[1, 1, 1, 1], correct_paths=[]))
    ds = load_dataset("json", data_files=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert ds["id"] == ["a", "b"] and ds[0]["decisions"] == [1, 0, 2, 1]


def test_validate_path():
    assert validate_path([0, 1, 2], num_layers=3) == [0, 1, 2]
    assert validate_path([3, 4, 1], num_layers=3) == [3, 4, 1]  # a sublayer search's units
    with pytest.raises(ValueError, match="^f line 1: decisions has 2 values, the model has 3 layers$"):
        validate_path([1, 1], num_layers=3, where="f line 1")
    with pytest.raises(
        ValueError, match=r"^decisions must hold only 0 \(skip\), 1 \(execute\), 2 \(repeat\)"
    ):
        validate_path([1, 5])


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "line 2: malformed JSON"),
        ({"id": "x", "decisions": [1, 1, 1, 1]}, "line 2: missing key(s) ['prompt']"),
        (_row(5, (1, 5, 1, 1)), "line 2: decisions must hold only 0"),
        (_row(5, (1, True, 1, 1)), "line 2: decisions must hold only 0"),
        ({**_row(5), "decisions": "1111"}, "line 2: decisions must be a non-empty list"),
        (_row(5, (1, 1, 1)), "line 2: decisions has 3 values, the model has 4 layers"),
        (_row(0), "line 2: duplicate id 'ex0'"),
        ([1, 2], "line 2: expected a JSON object"),
        ({**_row(5), "id": ""}, "line 2: id must be a non-empty string"),
        ({**_row(5), "prompt": ""}, "line 2: prompt must be a non-empty string"),
        ({**_row(5), "reward": "1.0"}, "line 2: reward must be a number"),
        ({**_row(5), "simulations": -1}, "line 2: simulations must be a non-negative integer"),
        ({**_row(5), "correct_paths": [[1, 1]]}, "line 2: correct_paths[0] has 2 values, the model has 4"),
        ({**_row(5), "num_layers": 5}, "line 2: num_layers is 5, but decisions has 4 values"),
        ({**_row(5), "style": 3}, "line 2: style must be a string"),
        (
            _row(5, supervision={"evaluated": [{"path": "1541", "reward": 1.0, "margin": 5.0}]}),
            "line 2: supervision.evaluated[0].path must be a string of 4 digits",
        ),
        (_row(5, supervision={"evaluated": [{"path": "1a11", "reward": 1.0}]}), "'1a11'"),
        (_row(5, supervision={"evaluated": [{"path": "11111", "reward": 1.0}]}), "'11111'"),
        (_row(5, supervision={"seeds": {"evaluated": [{"path": 1111}]}}), "supervision.seeds.evaluated[0]"),
        (_row(5, supervision={"fix": {"path": "1151"}}), "supervision.fix.path"),
        (_row(5, supervision={"evaluated": [{"path": "1111", "reward": "1"}]}), "reward must be a number"),
    ],
)
def test_refusals_name_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path, [_row(0), bad, _row(9)])
    with pytest.raises(ValueError) as err:
        read_records(path, num_layers=4)
    assert "paths.jsonl" in str(err.value) and message in str(err.value)


def test_torn_last_line_is_dropped_with_a_warning(tmp_path):
    path = _write(tmp_path, [_row(0), _row(1), '{"id": "ex2", "prom'], newline_at_end=False)
    with pytest.warns(UserWarning, match="line 3: dropping a torn last line"):
        records = read_records(path, num_layers=4)
    assert [r.id for r in records] == ["ex0", "ex1"]
    assert path.read_text().endswith('"prom')  # reading changes nothing


def test_last_line_without_newline_but_valid_is_kept(tmp_path):
    path = _write(tmp_path, [_row(0), _row(1)], newline_at_end=False)
    assert len(read_records(path)) == 2


def test_malformed_last_line_with_newline_is_refused(tmp_path):
    path = _write(tmp_path, [_row(0), '{"id": "ex2", "prom'])
    with pytest.raises(ValueError, match="line 2: malformed JSON"):
        read_records(path)


def test_empty_file_is_refused_unless_allowed(tmp_path):
    path = tmp_path / "paths.jsonl"
    path.write_text("\n")
    with pytest.raises(ValueError, match="paths.jsonl holds no rows"):
        read_records(path)
    assert read_records(path, allow_empty=True) == []
    assert read_records(tmp_path / "nope.jsonl", allow_empty=True) == []


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_records(tmp_path / "nope.jsonl")
