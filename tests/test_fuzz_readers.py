"""Fuzzing the readers of every file drllm loads: bad input raises a clear ValueError, nothing else."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drllm.router.routers import CONFIG_NAME, Routers
from drllm.search.records import finished_ids, read_records
from drllm.search.tasks.jsonl import jsonl_task
from drllm.train.features import _load_cached
from drllm.train.trainer import read_run_record

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
        records = read_records(path, num_layers=4)
    except ValueError as err:
        assert "paths.jsonl" in str(err)
        return
    for record in records:
        assert len(record.decisions) == 4 and set(record.decisions) <= {0, 1, 2}
        assert isinstance(record.id, str) and record.id


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


@FUZZ
@given(data=st.binary(max_size=200), header=st.booleans())
def test_router_weights_reader_never_unpickles_and_names_the_file(tmp_path, data, header):
    config = {"num_layers": 2, "hidden_size": 4, "num_windows": 2, "bottleneck": 3}
    _write(tmp_path, CONFIG_NAME, json.dumps(config))
    if header:  # a plausible safetensors length prefix followed by junk
        data = len(data).to_bytes(8, "little") + data
    (tmp_path / "routers.safetensors").write_bytes(data)
    with pytest.raises(ValueError, match="routers.safetensors"):
        Routers.from_pretrained(tmp_path)


@FUZZ
@given(data=st.binary(max_size=300))
def test_feature_cache_reader_rebuilds_whatever_it_cannot_read(tmp_path, data):
    path = tmp_path / "features.safetensors"
    path.write_bytes(data)
    with pytest.warns(UserWarning, match="rebuilding it"):
        assert _load_cached(path, rows=3) is None


@FUZZ
@given(body=st.one_of(json_values.map(json.dumps), st.text(max_size=20)))
def test_run_record_reader(tmp_path, body):
    path = _write(tmp_path, "run.json", body)
    try:
        saved = read_run_record(path)
    except ValueError as err:
        assert "run.json" in str(err)
        return
    assert isinstance(saved, dict)
