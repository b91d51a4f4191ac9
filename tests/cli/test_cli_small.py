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


def test_a_locked_output_and_an_unwritable_one_are_one_line_errors(tiny_model_dir, mc_file, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    argv = ["search", "--model", tiny_model_dir, "--task", f"jsonl:{mc_file}", "--simulations", "2"]
    with SearchOutput(out), pytest.raises(SystemExit) as err:
        main([*argv, "--output", str(out)])
    assert err.value.code == 1 and "being written by another search" in capsys.readouterr().err  # runtime
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(SystemExit) as err:
        main([*argv, "--output", str(blocked / "p.jsonl")])  # a file where a folder should be
    text = capsys.readouterr().err
    last = text.strip().splitlines()[-1]
    assert err.value.code == 2 and last.startswith("drllm: error:") and str(blocked) in last
    assert "Traceback" not in text


def test_search_settings_include_the_controls(tiny_model_dir, mc_file, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    argv = ["search", "--model", tiny_model_dir, "--task", f"jsonl:{mc_file}", "--output", str(out)]
    main([*argv, "--simulations", "2", "--limit", "2", "--control", "wrong-gold"])
    with pytest.raises(SystemExit):
        main([*argv, "--simulations", "2", "--limit", "3"])
    assert "control: file 'wrong-gold', now 'none'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["search", "eval"])
def test_bad_output_locations_are_refused_before_the_model_loads(
    command, mc_file, tmp_path, capsys, monkeypatch
):
    import drllm.router.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model loaded first"))
    blocked = tmp_path / "file"
    blocked.write_text("x")
    argv = [command, "--model", "m", "--task", f"jsonl:{mc_file}", "--output", str(blocked / "out")]
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2 and f"{blocked} is a file" in capsys.readouterr().err


def test_a_flag_wins_over_the_config_file_wherever_it_stands(tmp_path):
    from drllm.cli.__main__ import configs_first

    config = tmp_path / "c.yaml"
    config.write_text("limit: 3\n")
    moved = configs_first(["--limit", "5", "--config", str(config)])
    assert moved == ["--config", str(config), "--limit", "5"]
    assert configs_first([f"--config={config}", "--limit=5"]) == [f"--config={config}", "--limit=5"]


def test_a_key_repeated_in_a_config_file_is_refused(tiny_model_dir, mc_file, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("simulations: 2\nlimit: 2\nsimulations: 4\n")
    out = str(tmp_path / "p")
    argv = ["search", "--model", tiny_model_dir, "--task", f"jsonl:{mc_file}", "--output", out]
    with pytest.raises(SystemExit) as err:
        main([*argv, "--config", str(config)])
    assert err.value.code == 2
    assert "line 3: the key 'simulations' appears twice" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_a_flag_before_the_config_overrides_it(tiny_model_dir, mc_file, tmp_path):
    import json

    config = tmp_path / "c.yaml"
    config.write_text("simulations: 2\nlimit: 3\nsweep: false\n")
    out = tmp_path / "p.jsonl"
    argv = ["search", "--limit", "1", "--config", str(config), "--model", tiny_model_dir]
    main([*argv, "--task", f"jsonl:{mc_file}", "--output", str(out)])
    assert len([json.loads(x) for x in out.read_text().splitlines()]) == 1


@pytest.mark.parametrize("command", ["search", "train", "eval", "signal"])
def test_help_has_no_docstring_markup(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "--output" in text and "``" not in text and ":class:" not in text


def test_generate_runs_a_unit_path_from_the_command_line(tiny_model_dir, capsys):
    from drllm.cli.__main__ import main

    main(
        [
            "generate",
            "--model",
            tiny_model_dir,
            "--prompt",
            "hi",
            "--decisions",
            "3,4,1,0",
            "--max-new-tokens",
            "2",
        ]
    )
    assert "layers executed per token: 3 of 4; path 3410" in capsys.readouterr().out
