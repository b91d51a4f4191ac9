"""Small things a user notices: --version, did-you-mean, no abbreviations, help as the README writes it."""

import pytest

from drllm.cli.__main__ import main
from drllm.search.records import SearchOutput


def test_version(capsys):
    main(["--version"])
    assert capsys.readouterr().out.startswith("drllm 0.")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["serach"], "unknown command 'serach' (did you mean search?)"),
        (["search", "--task", "t", "--output", "o", "--simulatoins", "3"], "did you mean --simulations?"),
        (["search", "--task", "t", "--output", "o", "--sim", "3"], "unknown flag --sim"),  # no abbreviations
        (["eval", "--task", "t", "--output", "o", "--style", "fancy"], "style"),
    ],
)
def test_mistakes_name_the_problem(argv, message, capsys):
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err


def test_help_writes_flags_with_dashes_and_lists_choices(capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = capsys.readouterr().out
    assert "--batch-size" in text and "--batch_size" not in text
    assert "{auto,plain,chat}" in text and "teacher-" in text


def test_no_lock_file_lingers_after_a_clean_exit(tmp_path):
    out = tmp_path / "p.jsonl"
    with SearchOutput(out):
        assert (tmp_path / "p.jsonl.lock").exists()
    assert not (tmp_path / "p.jsonl.lock").exists()
