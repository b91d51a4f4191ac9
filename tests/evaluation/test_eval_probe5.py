"""The fifth hostile probe's ``drllm eval`` cases: each was lost work, a double count or a traceback."""

import json

import pytest
from task_files import choice_file, exact_file

from drllm.cli import __main__ as cli
from drllm.evaluation.arguments import task_names
from drllm.evaluation.calibration import was_trained
from drllm.evaluation.evaluate import run_eval
from drllm.evaluation.results import agrees
from drllm.search.evaluator import Outcome

FAST = dict(batch_size=4, calibration=2, target_layers=(3,), baselines=("drop-last",), fidelity_tokens=2)


def _cli_fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as err:
        cli.main(argv)
    text = capsys.readouterr().err.strip()
    assert err.value.code == 2 and "Traceback" not in text, text
    return text.splitlines()[-1]


def test_an_output_folder_holding_the_task_file_is_refused_and_the_file_kept(tmp_path, tiny_model_dir):
    out = tmp_path / "e"
    out.mkdir()
    task = choice_file(out / "examples.jsonl")
    before = (out / "examples.jsonl").read_text()
    with pytest.raises(ValueError, match="--output .* holds the task file") as err:
        run_eval(tiny_model_dir, task, str(out), **FAST)
    assert str(out) in str(err.value) and task in str(err.value)
    assert (out / "examples.jsonl").read_text() == before and sorted(out.iterdir()) == [
        out / "examples.jsonl"
    ]
    (out / "deep").mkdir()
    deep = choice_file(out / "deep" / "mc.jsonl")  # at any depth
    with pytest.raises(ValueError, match="holds the task file"):
        run_eval(tiny_model_dir, f"{choice_file(tmp_path / 'ok.jsonl')},{deep}", str(out), **FAST)


def test_one_task_file_under_two_spellings_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    choice_file(tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match=r"'jsonl:a.jsonl' and 'jsonl:./a.jsonl'"):
        run_eval("no-model-loaded", "jsonl:a.jsonl,jsonl:./a.jsonl", str(tmp_path / "e"))
    with pytest.raises(ValueError, match="names the task .* twice"):
        task_names(f"jsonl:a.jsonl,jsonl:{tmp_path / 'a.jsonl'}")
    assert not (tmp_path / "e").exists()


def test_trained_on_matches_a_jsonl_task_under_another_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    choice_file(tmp_path / "mc.jsonl")
    keys = frozenset({"jsonl:mc.jsonl/q0", "jsonl:mc.jsonl/a/b"})  # written by a training run here
    for name in (f"jsonl:{tmp_path / 'mc.jsonl'}", "jsonl:./mc.jsonl", "jsonl:mc.jsonl"):
        assert was_trained(keys, name, "q0") and was_trained(keys, name, "a/b")
        assert not was_trained(keys, name, "q1")
    choice_file(tmp_path / "other.jsonl")
    assert not was_trained(keys, f"jsonl:{tmp_path / 'other.jsonl'}", "q0")


def test_prompts_only_tasks_stay_out_of_the_pooled_accuracy(tmp_path, tiny_model_dir):
    mc, ex = choice_file(tmp_path / "mc.jsonl"), exact_file(tmp_path / "ex.jsonl", n=4)
    prompts = tmp_path / "po.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": f"tell me {i}"}) + "\n" for i in range(4))
    )
    out = tmp_path / "e"
    rows = run_eval(tiny_model_dir, f"{mc},{ex},jsonl:{prompts}", str(out), max_new_tokens=3, **FAST)
    by = {(r.task, r.method): r for r in rows}
    assert by["pooled", "base"].n == by[mc, "base"].n + by[ex, "base"].n  # the prompts are not pooled
    title = (out / "results.md").read_text().splitlines()[0]
    assert "the 10 examples of the 2 tasks with gold answers" in title
    assert f"prompts-only tasks (jsonl:{prompts}) are not pooled" in title


def test_the_base_model_agrees_with_itself_when_it_gives_no_answer(tmp_path, tiny_model_dir):
    none = Outcome(0.0, answer=None)
    assert agrees(none, none, "generate") and agrees(Outcome(0.0, answer=None), none, "generate")
    assert not agrees(Outcome(1.0, answer="3"), none, "generate")
    task = exact_file(tmp_path / "ex.jsonl", n=4)
    rows = run_eval(tiny_model_dir, task, str(tmp_path / "e"), max_new_tokens=3, **FAST)
    assert rows[0].method == "base" and rows[0].agreement.value == 1.0
    saved = [json.loads(line) for line in (tmp_path / "e" / "examples.jsonl").read_text().splitlines()]
    assert all(r["agree"] for r in saved if r["method"] == "base")


def test_a_repeated_baseline_is_refused_by_name(tmp_path, mc_file):
    with pytest.raises(ValueError, match="--baselines names angular more than once"):
        run_eval("no-model-loaded", f"jsonl:{mc_file}", str(tmp_path / "e"), baselines=("angular", "angular"))
    assert not (tmp_path / "e").exists()


def test_zero_new_tokens_are_refused_before_the_model_loads(tmp_path):
    task = exact_file(tmp_path / "ex.jsonl")
    with pytest.raises(ValueError, match="--max-new-tokens.* >= 1, got 0"):
        run_eval("no-model-loaded", task, str(tmp_path / "e"), max_new_tokens=0)
    assert not (tmp_path / "e").exists()


def test_cli_names_the_flag_value_and_range_of_bad_levels(tmp_path, tiny_model_dir, mc_file, capsys):
    argv = ["eval", "--model", tiny_model_dir, "--task", f"jsonl:{mc_file}", "--output", str(tmp_path / "e")]
    line = _cli_fails([*argv, "--target-layers", "-3"], capsys)
    assert "--target-layers" in line and "1 .. L - 1" in line and "-3" in line
    line = _cli_fails([*argv, "--target-compute", "-0.5"], capsys)
    assert "--target-compute" in line and "(0, 1)" in line and "-0.5" in line
    assert not (tmp_path / "e").exists()


def test_cli_empty_baselines_list_the_known_ones(tmp_path, tiny_model_dir, mc_file, capsys):
    argv = ["eval", "--model", tiny_model_dir, "--task", f"jsonl:{mc_file}", "--output", str(tmp_path / "e")]
    line = _cli_fails([*argv, "--baselines", ""], capsys)
    assert "--baselines holds an empty name" in line and "known baselines: greedy, block-influence" in line
    assert not (tmp_path / "e").exists()


def test_a_jsonl_file_with_a_comma_in_its_name_is_one_task(tmp_path, tiny_model_dir):
    odd = choice_file(tmp_path / "a,b.jsonl")
    other = choice_file(tmp_path / "c.jsonl")
    assert task_names(f"{odd},{other}") == [odd, other]
    rows = run_eval(tiny_model_dir, odd, str(tmp_path / "e"), **FAST)
    assert {r.task for r in rows} == {odd}
    (tmp_path / "a").write_text("")  # jsonl:.../a and jsonl:.../a,b.jsonl both files: ambiguous
    with pytest.raises(ValueError, match="are both files"):
        task_names(odd)
