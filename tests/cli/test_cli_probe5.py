"""The fifth hostile probe's command-line cases: an output no file can be written in, config files
that name no file in their errors, and ``--control none`` for search."""

import json
import re
from pathlib import Path

import filelock
import pytest
from cli_args import search_args, train_args
from test_refusals import _fails

from drllm.cli import __main__ as cli
from drllm.search import output_files
from drllm.search.records import OutputLockedError, SearchOutput, check_output, folder_lock


@pytest.fixture
def unwritable(monkeypatch):
    """Every folder refuses new files, as a read-only one does (``os.access`` says yes to root)."""

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(output_files.tempfile, "mkstemp", refuse)


def test_an_output_no_file_can_be_created_in_is_named_not_blamed_on_a_lock(tmp_path, unwritable, capsys):
    with pytest.raises(ValueError, match=r"cannot be written: no file can be created in .*Permission denied"):
        check_output(tmp_path / "p.jsonl")
    with pytest.raises(ValueError, match="cannot be written"), folder_lock(tmp_path / "new", "x.lock", "run"):
        pass
    assert not (tmp_path / "new").exists()
    paths = tmp_path / "paths.jsonl"
    paths.write_text(json.dumps({"id": "q0", "prompt": "Question: 1?", "decisions": [1, 1, 1, 1]}) + "\n")
    line = _fails(train_args("no-model-loads", paths, tmp_path / "r"), capsys)
    assert "cannot be written" in line and "being written by another" not in line
    assert not (tmp_path / "r").exists()


def test_a_lock_file_that_cannot_be_created_is_not_held_by_another_search(tmp_path, monkeypatch):
    def times_out(self, *args, **kwargs):  # filelock's answer when the lock file's open finds no file
        raise filelock.Timeout(self.lock_file)

    monkeypatch.setattr(filelock.FileLock, "acquire", times_out)
    with pytest.raises(ValueError, match=r"cannot be written: its lock .*o\.jsonl\.lock cannot be created"):
        SearchOutput(tmp_path / "o.jsonl")
    (tmp_path / "o.jsonl.lock").touch()  # a lock file another search holds
    with pytest.raises(OutputLockedError, match="another search"):
        SearchOutput(tmp_path / "o.jsonl")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_a_folder_of_proc_is_refused_as_unwritable(tmp_path):
    with pytest.raises(ValueError, match="cannot be written"):
        check_output("/proc/self/o.jsonl")
    with (
        pytest.raises(ValueError, match="cannot be (written|created)"),
        folder_lock("/proc/self", "x.lock", "run"),
    ):
        pass


@pytest.mark.parametrize(
    "text, expected",
    [
        ("epochs: [1\n", r"config file .*c\.yaml line 2, column 1 is not valid YAML"),
        ("epochs: 1\nbogus_key: 3\n", r"config file .*c\.yaml: 'bogus_key' is not a flag of this command"),
        ("batch-size: 2\n", r"'batch-size' is not a flag .*\(did you mean batch_size\?\)"),
        ('epochs: "two"\n', r"config file .*c\.yaml: --epochs expects int values, got two"),
        ("- a\n- b\n", r"config file .*c\.yaml: expected lines of flag: value .*found a list"),
        ("# nothing\n", r"config file .*c\.yaml: .*found nothing"),
        # out of range: refused by the command's own checks, which do not know the file
        ("epochs: 0\n", r"error: config file .*c\.yaml: epochs must be a whole number >= 1, got 0"),
        ("val_fraction: 1.5\n", r"error: config file .*c\.yaml: val_fraction must be .*got 1\.5"),
    ],
)
def test_config_file_errors_name_the_file(tmp_path, text, expected, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    argv = train_args("no-model-loads", tmp_path / "paths.jsonl", tmp_path / "r")
    line = _fails([*argv, "--config", str(config)], capsys)
    assert re.search(expected, line), line
    assert not (tmp_path / "r").exists()


def test_a_type_error_of_a_flag_names_no_file(tmp_path, capsys):
    argv = train_args("no-model-loads", tmp_path / "paths.jsonl", tmp_path / "r", "--epochs", "x")
    line = _fails(argv, capsys)
    assert "--epochs expects int values, got x" in line and "config file" not in line


def test_search_accepts_control_none_and_names_the_controls(tiny_model_dir, mc_file, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    cli.main([*search_args(tiny_model_dir, mc_file, out, "--limit", "2", "--control", "none", "-q")])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["settings"]["control"] == "none" for r in rows)
    capsys.readouterr()
    argv = search_args("no-model-loads", mc_file, tmp_path / "q.jsonl", "--control", "wrong_gold")
    assert "control must be 'none' or one of wrong-gold, got 'wrong_gold'" in _fails(argv, capsys)


def test_a_refused_value_is_blamed_on_a_file_only_when_the_file_set_it(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 3\nseed: 0\n")  # the file sets epochs, but the flag overrides it
    argv = train_args("no-model-loads", tmp_path / "paths.jsonl", tmp_path / "r", "--epochs", "0")
    line = _fails([*argv, "--config", str(config)], capsys)
    assert "epochs must be a whole number >= 1, got 0" in line and "config file" not in line
    config.write_text("epochs: 2\n")  # a file that sets another value of the key named is not blamed
    from drllm.cli.config_files import blame_value

    message = "epochs must be a whole number >= 1, got 0"
    assert blame_value(message, ["--config", str(config)]) == message
    config.write_text("epochs: 0\nseed: 0\n")  # two keys shown: the one named first is the culprit
    assert blame_value(message, ["--config", str(config)]) == f"config file {config}: {message}"
