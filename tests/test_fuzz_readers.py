"""Fuzzing the readers of every file drllm loads: bad input raises a clear ValueError, nothing else."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drllm.router.routers import CONFIG_NAME, Routers
from drllm.search.output import finished_ids
from drllm.search.task_jsonl import jsonl_task
from drllm.train.paths import read_paths

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
path_rows = st.fixed_dictionaries(
    {
        "id": st.one_of(st.text(max_size=4), st.integers()),
        "prompt": st.text(max_size=10),
        "decisions": st.lists(st.integers(-1, 3), max_size=6),
    },
    optional={"extra": json_values},
)
lines = st.lists(
    st.one_of(path_rows.map(json.dumps), json_values.map(json.dumps), st.text(max_size=20)), max_size=6
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _write(tmp_path, name, body: str):
    path = tmp_path / name
    path.write_text(body)
    return path


@FUZZ
@given(body=lines, newline=st.booleans())
def test_path_reader_accepts_or_names_the_problem(tmp_path, body, newline):
    path = _write(tmp_path, "paths.jsonl", "\n".join(body) + ("\n" if newline else ""))
    try:
        rows = read_paths(path, num_layers=4)
    except ValueError as err:
        assert "paths.jsonl" in str(err)
        return
    for row in rows:
        assert len(row["decisions"]) == 4 and set(row["decisions"]) <= {0, 1, 2}


@FUZZ
@given(body=lines)
def test_search_output_reader_accepts_or_names_the_line(tmp_path, body):
    path = _write(tmp_path, "out.jsonl", "\n".join(body) + "\n")
    try:
        ids = finished_ids(path)
    except ValueError as err:
        assert "line" in str(err)
        return
    assert all(isinstance(i, str) for i in ids)


@FUZZ
@given(config=json_values)
def test_router_config_reader(tmp_path, config):
    _write(tmp_path, CONFIG_NAME, json.dumps(config))
    _write(tmp_path, "routers.safetensors", "not safetensors")
    with pytest.raises(ValueError):
        Routers.from_pretrained(tmp_path)


@FUZZ
@given(body=lines)
def test_task_file_reader(tmp_path, body):
    path = _write(tmp_path, "task.jsonl", "\n".join(body) + "\n")
    try:
        task = jsonl_task(f"jsonl:{path}")
        examples = task.load()
    except ValueError as err:
        assert "task.jsonl" in str(err)
        return
    assert all(ex.id for ex in examples)
