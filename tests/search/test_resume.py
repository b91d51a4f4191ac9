"""Search output survives crashes: killed searches resume to the same file, torn lines, locks."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from cli_args import SUBPROCESS, search_args

from drllm.search.records import OutputLockedError, SearchOutput, SearchRecord, read_records


def _rows_by_id(path):
    records = read_records(path)  # refuses an example written twice
    assert path.read_bytes().count(b"\n") == len(records)
    return {r.id: r for r in records}


def _search(model_dir, task_file, out):
    return [
        *SUBPROCESS,
        *search_args(model_dir, task_file, out, "--batch-size", "2", "--seed", "3", simulations=25),
    ]


def _lines(path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _kill_after(cmd, out, lines: int, extra: float) -> bool:
    """Start a search; SIGKILL it ``extra`` seconds after ``out`` holds ``lines`` lines. True if killed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and _lines(out) < lines and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(extra)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


@pytest.mark.slow
def test_killed_search_resumes_to_the_same_result(tiny_model_dir, mc_file, tmp_path):
    reference = tmp_path / "reference.jsonl"
    subprocess.run(_search(tiny_model_dir, mc_file, reference), check=True, capture_output=True)
    expected = _rows_by_id(reference)
    out = tmp_path / "killed.jsonl"
    cmd = _search(tiny_model_dir, mc_file, out)
    rng = random.Random(0)
    # kill points: once before anything is written, then after a random number of finished examples,
    # each plus a random delay so the kill lands at any moment of the next example
    points = [(0, 0.5)] + [(n, rng.uniform(0.0, 0.3)) for n in sorted(rng.sample(range(1, len(expected)), 4))]
    kills = sum(_kill_after(cmd, out, n, extra) for n, extra in points)
    subprocess.run(cmd, check=True, capture_output=True)
    print(f"search killed at {kills} of {len(points)} kill points")
    assert kills >= 3, "the search finished before it could be killed; make it longer"
    got = _rows_by_id(out)
    assert got.keys() == expected.keys()
    for key, row in expected.items():
        assert got[key].decisions == row.decisions and got[key].reward == row.reward


def _line(i, decisions=(1, 1)):
    return json.dumps({"id": i, "prompt": f"question {i}", "decisions": list(decisions)})


def _record(i):
    return SearchRecord(id=i, prompt=f"question {i}", decisions=[1, 0])


def test_torn_last_line_is_dropped_with_a_warning(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text(_line("a") + "\n" + '{"id": "b", "deci')
    with pytest.warns(UserWarning, match="torn last line"):
        writer = SearchOutput(out)
    with writer:
        assert writer.done == {"a"}
        writer.write(_record("b"))
    assert [r.id for r in read_records(out)] == ["a", "b"]


@pytest.mark.parametrize(
    "middle, problem",
    [
        ("not json", "line 2: malformed JSON.*refusing to append"),
        (None, "line 2: decisions must hold only 0"),
    ],
)
def test_a_bad_middle_line_is_refused_and_the_file_left_alone(tmp_path, middle, problem):
    out = tmp_path / "o.jsonl"
    text = _line("a") + "\n" + (middle or _line("b", (1, 7))) + "\n" + _line("c") + "\n"
    out.write_text(text)
    with pytest.raises(ValueError, match=problem):
        SearchOutput(out)
    assert out.read_text() == text


def test_a_malformed_middle_line_with_a_torn_tail_is_refused_before_any_change(tmp_path):
    out = tmp_path / "o.jsonl"
    text = _line("a") + "\nnot json\n" + '{"id": "c", "deci'
    out.write_text(text)
    with pytest.raises(ValueError, match="line 2: malformed JSON"):
        SearchOutput(out)
    assert out.read_text() == text
    with pytest.raises(ValueError, match="line 2"):  # the lock was released by the refusal
        SearchOutput(out)


def test_a_whole_last_row_missing_only_its_newline_is_kept(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text(_line("a") + "\n" + _line("b"))
    with SearchOutput(out) as writer:
        assert writer.done == {"a", "b"}
        writer.write(_record("c"))
    assert [r.id for r in read_records(out)] == ["a", "b", "c"]


def test_an_example_is_never_written_twice(tmp_path):
    out = tmp_path / "o.jsonl"
    with SearchOutput(out) as writer:
        writer.write(_record("a"))
        with pytest.raises(ValueError, match="already holds example 'a'"):
            writer.write(_record("a"))
    assert len(read_records(out)) == 1


def test_two_writers_on_one_file_are_refused(tmp_path):
    out = tmp_path / "o.jsonl"
    with SearchOutput(out):
        with pytest.raises(
            OutputLockedError, match=r"being written by another search \(lock .*o\.jsonl\.lock"
        ):
            SearchOutput(out)
    with SearchOutput(out) as again:  # the lock is released on close
        assert again.done == set()


def test_a_writer_in_another_process_is_refused(tmp_path):
    out = tmp_path / "o.jsonl"
    holder = (
        "import sys; from drllm.search.records import SearchOutput\n"
        "with SearchOutput(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError, match="o.jsonl.lock"):
            SearchOutput(out)
    finally:
        proc.communicate("")
    with SearchOutput(out):  # released when the other process closed it
        pass


@pytest.mark.slow
def test_search_sharded_over_two_processes_equals_one_process(tiny_model_dir, mc_file, tmp_path):
    single, sharded = tmp_path / "single.jsonl", tmp_path / "sharded.jsonl"
    alone = subprocess.run(
        _search(tiny_model_dir, mc_file, single), check=True, capture_output=True, text=True
    )
    run = subprocess.run(
        _search(tiny_model_dir, mc_file, sharded) + ["--devices", "2"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # one summary on stdout, the merged file's, printed once by the launching process
    assert json.loads(run.stdout) == json.loads(alone.stdout)
    expected, got = _rows_by_id(single), _rows_by_id(sharded)
    assert got.keys() == expected.keys()
    for key, row in expected.items():
        assert got[key].decisions == row.decisions and got[key].reward == row.reward
    assert not list(tmp_path.glob("sharded.jsonl.rank*")), "rank files are merged and removed"


def test_a_full_disk_mid_line_is_one_error_and_the_rerun_continues(
    tiny_model_dir, mc_file, tmp_path, monkeypatch, capsys
):
    """The disk fills up halfway through the second record: one line naming the file and what is kept; once
    there is space again the same command drops the torn line and finishes, every record whole."""
    from drllm.cli.__main__ import main
    from drllm.search import records as records_module

    out = tmp_path / "p.jsonl"
    argv = ["search", "--model", tiny_model_dir, "--task", f"jsonl:{mc_file}", "--simulations", "2"]
    argv += ["--output", str(out), "--batch-size", "1"]
    real_write, calls = os.write, []

    def filling_disk(fd, data):
        calls.append(len(data))
        if len(calls) == 2:
            return real_write(fd, data[: len(data) // 2])  # the disk is full after half the line
        return real_write(fd, data)

    monkeypatch.setattr(records_module.os, "write", filling_disk)
    with pytest.raises(SystemExit) as err:
        main(argv)
    text = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 1 and "Traceback" not in "\n".join(text)  # a runtime error, not a usage one
    assert text[-1].startswith("drllm: error: short write") and f"to {out}; the 1 example(s)" in text[-1]
    monkeypatch.setattr(records_module.os, "write", real_write)
    with pytest.warns(UserWarning, match="torn last line"):
        main(argv)
    rows = read_records(out)
    assert len(rows) == len(mc_file.read_text().splitlines()) and len({r.id for r in rows}) == len(rows)
