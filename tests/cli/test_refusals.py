"""The second hostile probe's cases: each was a traceback or a silent substitution, now one named line."""

import json

import pytest
from task_files import exact_file

from drllm.cli import __main__ as cli
from drllm.search.tasks import get_task
from drllm.search.tasks.jsonl import option_labels


def _fails(argv, capsys, code=2):
    with pytest.raises(SystemExit) as err:
        cli.main(argv)
    text = capsys.readouterr().err.strip()
    assert err.value.code == code and "Traceback" not in text, text
    return text.splitlines()[-1]


def test_device_meta_is_refused(tiny_model_dir, capsys):
    line = _fails(["generate", "--model", tiny_model_dir, "--prompt", "hi", "--device", "meta"], capsys)
    assert "device 'meta' holds no weights" in line


def test_greedy_examples_must_be_positive(tiny_model_dir, mc_file, tmp_path, capsys):
    argv = ["eval", "--model", tiny_model_dir, "--task", f"jsonl:{mc_file}", "--output", str(tmp_path / "e")]
    assert "greedy_examples must be a whole number >= 1, got 0" in _fails(
        [*argv, "--greedy-examples", "0"], capsys
    )
    assert not (tmp_path / "e").exists()


def test_wrong_gold_control_is_refused_on_exact_answer_tasks(tiny_model_dir, tmp_path, capsys):
    task = exact_file(tmp_path / "ex.jsonl", n=3)
    argv = ["search", "--model", tiny_model_dir, "--task", task, "--output", str(tmp_path / "p.jsonl")]
    line = _fails([*argv, "--control", "wrong-gold"], capsys)
    assert "wrong-gold" in line and "exact answers" in line


def test_more_than_26_options_get_letter_labels(tmp_path):
    assert option_labels(3) == ["A", "B", "C"]
    assert option_labels(28)[25:] == ["Z", "AA", "AB"]
    choices = [f"option {k}" for k in range(30)]
    path = tmp_path / "many.jsonl"
    path.write_text(json.dumps({"id": "q", "question": "which?", "choices": choices, "answer": 29}) + "\n")
    (ex,) = get_task(f"jsonl:{path}").load()
    assert all(label.isalpha() for label in ex.labels) and len(set(ex.labels)) == 30


def test_generate_refuses_a_prompt_past_the_context_and_bad_decoding_flags(tiny_model_dir, capsys):
    argv = ["generate", "--model", tiny_model_dir, "--prompt", "hi"]
    assert "passes the model's context" in _fails([*argv, "--max-new-tokens", "100000"], capsys)
    assert "top_p must lie in (0, 1]" in _fails([*argv, "--do-sample", "--top-p", "0"], capsys)
    assert "num_beams must be a whole number >= 1" in _fails([*argv, "--num-beams", "0"], capsys)


def test_generate_samples_and_beams_with_routers_deciding_once(tiny_model_dir, capsys):
    argv = [
        "generate",
        "--model",
        tiny_model_dir,
        "--prompt",
        "hi",
        "--max-new-tokens",
        "4",
        "--chat",
        "false",
    ]
    cli.main([*argv, "--do-sample", "--seed", "3", "--decisions", "1,0,1,1"])
    first = capsys.readouterr().out
    cli.main([*argv, "--do-sample", "--seed", "3", "--decisions", "1,0,1,1"])
    assert capsys.readouterr().out == first  # seeded
    cli.main([*argv, "--num-beams", "2", "--decisions", "1,2,1,1", "--dtype", "float32"])
    assert "layers executed per token: 5 of 4" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["results.json", "decisions.json", "metrics.json"])
def test_a_damaged_stage_file_makes_the_demo_run_that_stage_again(tmp_path, name):
    from drllm.cli import demo

    args = {"task": "arc_easy", "epochs": 2}
    demo._mark(tmp_path, args)
    for f in ("results.json", "decisions.json", "metrics.json"):
        (tmp_path / f).write_text("{}")
    assert demo._finished(tmp_path, args, ("results.json", "decisions.json", "metrics.json"))
    (tmp_path / name).write_text('{"rows": [')  # cut off mid-write
    assert not demo._finished(tmp_path, args, ("results.json", "decisions.json", "metrics.json"))


def test_results_go_to_stdout_and_progress_to_stderr(tiny_model_dir, mc_file, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    argv = ["search", "--model", tiny_model_dir, "--task", f"jsonl:{mc_file}", "--output", str(out)]
    cli.main([*argv, "--limit", "2", "--simulations", "2", "--sweep", "false"])
    captured = capsys.readouterr()
    assert isinstance(json.loads(captured.out), dict)  # the summary, and nothing else, on stdout
    assert "drllm" not in captured.out.splitlines()[0] or captured.out.lstrip().startswith("{")
