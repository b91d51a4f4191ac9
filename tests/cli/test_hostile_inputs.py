"""Found by a hostile probe of the CLI (72 cases beyond the guarantee table): each is now one line that
names the problem, before any model loads or any file is written."""

import json

import pytest
from tiny_models import tiny_model, tiny_tokenizer

from drllm.cli import __main__ as cli
from drllm.router import RoutedModel
from drllm.search.runner import run_search
from drllm.search.tasks import get_task


def _fails(argv, capsys, code=2):
    with pytest.raises(SystemExit) as err:
        cli.main(argv)
    text = capsys.readouterr().err.strip()
    assert err.value.code == code and "Traceback" not in text
    return text.splitlines()[-1]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-rows", "0"], "max_rows must be a whole number >= 1, got 0"),
        (["--max-rows=-3"], "max_rows must be a whole number >= 1, got -3"),
        (["--output", "/dev/null"], "output /dev/null is not a regular file"),
    ],
)
def test_search_refusals(mc_file, tmp_path, capsys, extra, message):
    argv = [
        "search",
        "--model",
        "nowhere",
        "--task",
        f"jsonl:{mc_file}",
        "--output",
        str(tmp_path / "p.jsonl"),
    ]
    assert message in _fails([*argv, *extra], capsys)
    assert not (tmp_path / "p.jsonl").exists()


def test_a_non_finite_safe_margin_from_python_or_yaml_is_refused(mc_file, tmp_path):
    with pytest.raises(ValueError, match="safe_margin must be a finite number, got nan"):
        run_search("nowhere", f"jsonl:{mc_file}", str(tmp_path / "p.jsonl"), safe_margin=float("nan"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--fidelity-tokens=-1"], "fidelity_tokens must be a whole number >= 0, got -1"),
        (["--baselines", "random", "--random-seeds", "0"], "the random baseline needs random_seeds >= 1"),
    ],
)
def test_eval_refusals(mc_file, tmp_path, capsys, extra, message):
    argv = ["eval", "--model", "nowhere", "--task", f"jsonl:{mc_file}", "--output", str(tmp_path / "e")]
    assert message in _fails([*argv, *extra], capsys)


def test_two_tasks_that_would_share_an_output_folder_are_refused(mc_file, tmp_path, capsys):
    twin = tmp_path / "A_task.jsonl"
    (tmp_path / "A").mkdir()
    twin.write_text(mc_file.read_text())
    (tmp_path / "A" / "task.jsonl").write_text(mc_file.read_text())
    tasks = f"jsonl:{tmp_path / 'A' / 'task.jsonl'},jsonl:{twin}"
    line = _fails(["eval", "--model", "nowhere", "--task", tasks, "--output", str(tmp_path / "e")], capsys)
    assert "would share the output folder" in line


def test_demo_and_train_refuse_bad_counts_and_outputs_before_loading(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert "train_examples must be a whole number >= 1, got 0" in _fails(
        ["demo", "--model", "nowhere", "--train-examples", "0", "--output", str(tmp_path / "d")], capsys
    )
    assert f"output {blocker} is a file; expected a folder" in _fails(
        ["demo", "--model", "nowhere", "--output", str(blocker)], capsys
    )
    paths = tmp_path / "paths.jsonl"
    paths.write_text(json.dumps({"id": "a", "prompt": "p", "decisions": [1, 1, 1, 1]}) + "\n")
    assert "output /dev/null is a file; it must be a folder" in _fails(
        ["train", "--model", "nowhere", "--paths", str(paths), "--output", "/dev/null"], capsys
    )


def test_rows_with_an_empty_option_or_a_repeated_key_are_skipped_by_name(tmp_path, caplog):
    rows = [
        '{"id": "a", "question": "q?", "choices": ["x", "y"], "answer": 0}',
        '{"id": "b", "question": "q?", "choices": ["", "y"], "answer": 0}',
        '{"id": "c", "id": "d", "question": "q?", "choices": ["x", "y"], "answer": 0}',
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(rows) + "\n")
    with caplog.at_level("WARNING"):
        kept = get_task(f"jsonl:{path}").load()
    assert [ex.id for ex in kept] == ["a"]
    assert f"{path} line 2: example 'b' has an empty option (option 0)" in caplog.text
    assert f"{path} line 3: the key 'id' appears twice in the row" in caplog.text


def test_an_interrupt_is_one_line_with_exit_code_130(monkeypatch, mc_file, tmp_path, capsys):
    import functools

    from drllm.evaluation import evaluate
    from drllm.search import runner

    for module, name in ((runner, "run_search"), (evaluate, "run_eval")):
        real = getattr(module, name)

        @functools.wraps(real)
        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(module, name, interrupted)
    line = _fails(
        ["search", "--task", f"jsonl:{mc_file}", "--output", str(tmp_path / "p.jsonl")], capsys, 130
    )
    assert (
        line == "drllm: search interrupted; what it finished is kept, and the same command continues from it"
    )
    line = _fails(["eval", "--task", f"jsonl:{mc_file}", "--output", str(tmp_path / "e")], capsys, 130)
    assert line == "drllm: eval interrupted; nothing was written"


def test_chat_style_without_a_chat_template_is_refused(mc_file, tmp_path):
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    with pytest.raises(ValueError, match="style 'chat' needs a tokenizer with a chat template"):
        run_search(
            routed, f"jsonl:{mc_file}", str(tmp_path / "p.jsonl"), tokenizer=tiny_tokenizer(), style="chat"
        )


def test_options_that_encode_alike_are_skipped_and_the_search_goes_on(tmp_path, caplog):
    rows = [
        {"id": "a", "question": "red or blue?", "choices": ["red", "blue"], "answer": 0},
        {"id": "b", "question": "red again?", "choices": ["é", "ü"], "answer": 1},  # both unknown: one token
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    out = tmp_path / "p.jsonl"
    with caplog.at_level("WARNING"):
        summary = run_search(routed, f"jsonl:{path}", str(out), tokenizer=tiny_tokenizer(), simulations=2)
    assert summary["examples"] == 1
    assert "skipping example 'b': example b: options 0 and 1 encode to the same tokens" in caplog.text
    with pytest.raises(ValueError, match="options 0 and 1 encode to the same tokens"):
        run_search(
            routed, f"jsonl:{path}", str(tmp_path / "s.jsonl"), tokenizer=tiny_tokenizer(), strict=True
        )


def test_resuming_over_an_example_whose_row_changed_is_refused(tmp_path):
    rows = [
        {"id": f"q{i}", "question": f"red {i}?", "choices": ["red", "blue"], "answer": 0} for i in range(3)
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    out = tmp_path / "p.jsonl"
    run_search(routed, f"jsonl:{path}", str(out), tokenizer=tiny_tokenizer(), simulations=2, limit=2)
    rows[1]["answer"] = 1  # the gold changes after q1 was searched
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="example 'q1' was searched with another gold continuation"):
        run_search(routed, f"jsonl:{path}", str(out), tokenizer=tiny_tokenizer(), simulations=2)
    rows[1]["answer"], rows[0]["question"] = 0, "blue 0?"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="example 'q0' was searched with another prompt"):
        run_search(routed, f"jsonl:{path}", str(out), tokenizer=tiny_tokenizer(), simulations=2)
    summary = run_search(
        routed, f"jsonl:{path}", str(out), tokenizer=tiny_tokenizer(), simulations=2, restart=True
    )
    assert summary["examples"] == 3


def test_negative_numbers_in_any_notation_are_values_not_flags():
    from drllm.cli.__main__ import adapt_argv, command_parser

    parser = command_parser("search")
    argv = adapt_argv(parser, ["--task", "t", "--output", "o", "--safe-margin", "-1e-3", "--seed", "-2"])
    cfg = parser.parse_args(argv)
    assert cfg.safe_margin == -1e-3 and cfg.seed == -2
