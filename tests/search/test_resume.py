"""Search output survives crashes: killed searches resume to the same file, torn lines, locks."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest

from drllm.search.output import OutputLockedError, SearchOutput, finished_ids


def _rows_by_id(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an example was written twice"
    return {r["id"]: r for r in rows}


def _search(model_dir, task_file, out):
    return [
        sys.executable,
        "-m",
        "drllm.train.cli",
        "search",
        "--model",
        model_dir,
        "--task",
        f"jsonl:{task_file}",
        "--output",
        str(out),
        "--simulations",
        "25",
        "--batch-size",
        "2",
        "--seed",
        "3",
    ]


@pytest.mark.slow
def test_killed_search_resumes_to_the_same_result(tiny_model_dir, mc_file, tmp_path):
    reference = tmp_path / "reference.jsonl"
    subprocess.run(_search(tiny_model_dir, mc_file, reference), check=True, capture_output=True)
    expected = _rows_by_id(reference)
    out = tmp_path / "killed.jsonl"
    rng = random.Random(0)
    kills, partial = 0, 0
    for _ in range(12):
        proc = subprocess.Popen(
            _search(tiny_model_dir, mc_file, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(2.0, 6.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        done = len(finished_ids(out)) if out.exists() else 0
        partial += int(0 < done < len(expected))
        if done == len(expected):
            break
    subprocess.run(_search(tiny_model_dir, mc_file, out), check=True, capture_output=True)
    print(f"search killed {kills} times ({partial} times between examples written)")
    assert kills >= 2, "the search finished before it could be killed; make it longer"
    assert partial >= 1, "no kill landed in the middle of the search"
    got = _rows_by_id(out)
    assert got.keys() == expected.keys()
    for key, row in expected.items():
        assert got[key]["decisions"] == row["decisions"] and got[key]["reward"] == row["reward"]


def test_torn_last_line_is_dropped_with_a_warning(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text(json.dumps({"id": "a"}) + "\n" + '{"id": "b", "deci')
    with pytest.warns(UserWarning, match="torn last line"):
        writer = SearchOutput(out)
    with writer:
        assert writer.done == {"a"}
        writer.write({"id": "b", "decisions": [1]})
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a", "b"]


def test_a_malformed_middle_line_is_refused_and_the_file_left_alone(tmp_path):
    out = tmp_path / "o.jsonl"
    text = json.dumps({"id": "a"}) + "\nnot json\n" + json.dumps({"id": "c"}) + "\n"
    out.write_text(text)
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        SearchOutput(out)
    assert out.read_text() == text


def test_two_writers_on_one_file_are_refused(tmp_path):
    out = tmp_path / "o.jsonl"
    with SearchOutput(out):
        with pytest.raises(OutputLockedError, match="being written by another search"):
            SearchOutput(out)
    with SearchOutput(out) as again:  # the lock is released on close
        assert again.done == set()
