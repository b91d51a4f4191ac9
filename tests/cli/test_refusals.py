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


def test_generate_refuses_flags_it_would_ignore(tiny_model_dir, tmp_path, capsys):
    argv = ["generate", "--model", tiny_model_dir, "--prompt", "hi"]
    line = _fails([*argv, "--temperature", "0.5", "--top-k", "3"], capsys)
    assert "--temperature, --top-k only apply when sampling" in line
    assert "no --routers are given" in _fails([*argv, "--budget", "1.5"], capsys)
    assert "--decisions fixes the path" in _fails([*argv, "--decisions", "1,1,1,1", "--budget", "1"], capsys)
    both = [*argv, "--decisions", "1,1,1,1", "--routers", str(tmp_path)]
    assert "not both" in _fails(both, capsys)


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


def test_kl_training_refuses_label_flags_and_impossible_settings(tiny_model_dir, tmp_path, capsys):
    task = exact_file(tmp_path / "ex.jsonl", n=4)
    argv = ["train", "--model", tiny_model_dir, "--objective", "kl", "--target-layers", "3", "--tasks", task]
    argv += ["--output", str(tmp_path / "k")]
    assert "control is a flag of label training" in _fails([*argv, "--control", "shuffled"], capsys)
    assert "read_layer is a flag of label training" in _fails([*argv, "--read-layer", "5"], capsys)
    assert "min_layers must lie in [0, target_layers = 3" in _fails([*argv, "--min-layers", "10"], capsys)
    assert "target_layers must be a number of layers > 0" in _fails([*argv, "--target-layers=-1"], capsys)
    assert "continuation_tokens must be" in _fails([*argv, "--continuation-tokens", "0"], capsys)
    copied = tmp_path / "copied"  # `cp -rL` turns the published link into a real folder (or file)
    (copied / "current").mkdir(parents=True)
    at = [*argv[:-1], str(copied)]
    assert "current is a real folder" in _fails(at, capsys)
    (copied / "current").rmdir()
    (copied / "current").write_text("x")
    assert "current is a real file" in _fails(at, capsys)
    assert not list(copied.glob(".current.tmp-*")) and not (copied / "versions").exists()
    labels = ["train", "--model", tiny_model_dir, "--paths", task, "--output", str(tmp_path / "l")]
    assert "flags of --objective kl" in _fails([*labels, "--target-layers", "3"], capsys)


def test_kl_signal_refuses_k_zero_and_a_missing_file_is_bad_input(tiny_model_dir, tmp_path, capsys):
    task = exact_file(tmp_path / "ex.jsonl", n=4)
    argv = [
        "signal",
        "--model",
        tiny_model_dir,
        "--target",
        "kl",
        "--tasks",
        task,
        "--output",
        str(tmp_path / "s"),
    ]
    assert "k must be a whole number >= 1" in _fails([*argv, "--k", "0"], capsys)
    gen = ["generate", "--model", tiny_model_dir, "--prompt", "hi", "--routers", str(tmp_path / "none")]
    assert "router_config.json" in _fails(gen, capsys)  # exit 2: a bad input, not a runtime failure


def test_an_edited_prompt_under_the_same_id_is_generated_again(tmp_path):
    from tiny_models import tiny_model, tiny_tokenizer

    from drllm.router import RoutedModel
    from drllm.search.teacher import Prompt, build_teacher

    routed, tok = RoutedModel(tiny_model("llama")), tiny_tokenizer()
    first = build_teacher(routed, tok, [Prompt("a", "t", "say ab")], tmp_path, tokens=3, progress=False)
    again = build_teacher(routed, tok, [Prompt("a", "t", "print xyz")], tmp_path, tokens=3, progress=False)
    assert again[0]["prompt"] == "print xyz" and again[0]["prompt_ids"] != first[0]["prompt_ids"]


def test_a_prompt_with_options_longer_than_the_context_together_is_scored(tmp_path):
    from tiny_models import tiny_model, tiny_tokenizer

    from drllm.router import RoutedModel
    from drllm.search.evaluator import PathEvaluator

    routed = RoutedModel(tiny_model("llama", max_position_embeddings=64))
    row = {"id": "long", "question": "x" * 8, "choices": ["a" * 25, "b" * 25, "c" * 25], "answer": 0}
    path = tmp_path / "packed.jsonl"
    path.write_text(json.dumps(row) + "\n")
    ev = PathEvaluator(routed, tiny_tokenizer(), get_task(f"jsonl:{path}"))
    (p,) = ev.prepare(get_task(f"jsonl:{path}").load())
    assert (
        len(p.tokens) > 64 and int(p.positions.max()) < 64
    )  # packed past the context, each option within it
    assert ev.outcomes([(p, (1, 1, 1, 1))])[0].answer in (0, 1, 2)


def test_analyze_refuses_a_path_that_skips_every_layer(tiny_model_dir, mc_file, tmp_path, capsys):
    argv = [
        "analyze",
        "--model",
        tiny_model_dir,
        "--task",
        f"jsonl:{mc_file}",
        "--output",
        str(tmp_path / "a"),
    ]
    assert "skips every layer" in _fails([*argv, "--decisions", "0,0,0,0"], capsys)
    assert not (tmp_path / "a").exists()


def test_a_badly_typed_flag_is_one_line_naming_it(tiny_model_dir, tmp_path, capsys):
    argv = ["eval", "--model", tiny_model_dir, "--task", "arc_easy", "--output", str(tmp_path / "e")]
    with pytest.raises(SystemExit) as err:
        cli.main([*argv, "--target-layers", "27,x"])
    text = capsys.readouterr().err.strip()
    assert err.value.code == 2 and text == "drllm: error: eval: --target-layers expects int values, got x"


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["--target-layers", "9"], "target layers must lie in 1..3"),
        (["--baselines", "nope"], "unknown baselines"),
        (["--calibration", "0"], "calibration must be >= 1"),
    ],
)
def test_the_demo_refuses_bad_evaluation_settings_before_searching(
    tiny_model_dir, mc_file, tmp_path, capsys, extra, problem
):
    argv = ["demo", "--model", tiny_model_dir, "--task", f"jsonl:{mc_file}", "--output", str(tmp_path / "d")]
    assert problem in _fails([*argv, "--train-examples", "4", "--simulations", "2", *extra], capsys)
    assert not (tmp_path / "d" / "paths.jsonl").exists()


def test_the_third_probe_refusals(tiny_model_dir, mc_file, tmp_path, capsys, monkeypatch):
    gen = ["generate", "--model", tiny_model_dir, "--prompt", "hi"]
    assert "--decisions is empty" in _fails([*gen, "--decisions", ""], capsys)
    search = [
        "search",
        "--model",
        tiny_model_dir,
        "--task",
        f"jsonl:{mc_file}",
        "--output",
        str(tmp_path / "p.jsonl"),
    ]
    assert "devices must be a whole number >= 1, got 0" in _fails([*search, "--devices", "0"], capsys)
    assert "the output path is empty" in _fails([*search[:-1], ""], capsys)
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    assert "symbolic link" in _fails([*search[:-1], str(tmp_path / "gone")], capsys)


def test_routers_record_a_local_base_model_as_an_absolute_path(tiny_model_dir, tmp_path, monkeypatch):
    import os

    from drllm.router import RoutedModel, load_routed

    monkeypatch.chdir(os.path.dirname(tiny_model_dir))
    routed = RoutedModel.from_pretrained(os.path.basename(tiny_model_dir))  # a relative folder name
    routed.add_routers(kind="linear")
    routed.save_pretrained(tmp_path / "r")
    monkeypatch.chdir(tmp_path)
    assert load_routed(routers=str(tmp_path / "r")).num_layers == 4  # found from anywhere


def test_generate_with_routers_alone_loads_the_base_model_they_record(tiny_model_dir, tmp_path, capsys):
    """Like AutoPeftModel: ``--routers`` without ``--model`` is the model the routers were trained for."""
    from drllm.router import RoutedModel

    routed = RoutedModel.from_pretrained(tiny_model_dir)
    routed.add_routers(kind="linear")
    routed.save_pretrained(tmp_path / "r")
    argv = ["generate", "--prompt", "hi", "--max-new-tokens", "2", "--chat", "false"]
    cli.main([*argv, "--routers", str(tmp_path / "r")])
    assert "of 4" in capsys.readouterr().out  # the tiny 4-layer model, not the embedded default


def test_eval_into_a_router_folder_is_refused_and_the_folder_is_untouched(
    tiny_model_dir, mc_file, tmp_path, capsys
):
    from drllm.router import RoutedModel

    routed = RoutedModel.from_pretrained(tiny_model_dir)
    routed.add_routers(kind="linear")
    folder = tmp_path / "r"
    routed.save_pretrained(folder)
    (folder / "decisions.png").write_bytes(b"the routers' own figure")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    argv = ["eval", "--model", tiny_model_dir, "--task", f"jsonl:{mc_file}", "--routers", str(folder)]
    line = _fails([*argv, "--output", str(folder)], capsys)
    assert f"output {folder} is a router folder (it holds router_config.json" in line
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
