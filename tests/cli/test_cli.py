"""The drllm command: flags, generate, search (resumable, loadable with datasets), configs."""

import json
from pathlib import Path

import pytest
import yaml
from cli_args import SUBPROCESS, search_args, train_args
from wandb_records import offline_record

from drllm.cli.__main__ import COMMANDS, adapt_argv, command_function, command_parser, main

ROOT = Path(__file__).resolve().parents[2]


def test_extra_spellings_become_jsonargparse_flags():
    generate, evaluate = command_parser("generate"), command_parser("eval")
    assert adapt_argv(generate, ["--max-new-tokens", "4", "-h", "a-b"]) == [
        "--max_new_tokens",
        "4",
        "-h",
        "a-b",
    ]
    with pytest.raises(ValueError, match="unknown flag --data-dir"):  # not an option of generate
        adapt_argv(generate, ["--data-dir=/x"])
    assert adapt_argv(generate, ["--stream", "--prompt", "x"]) == ["--stream=true", "--prompt", "x"]
    assert adapt_argv(generate, ["--chat", "false"]) == ["--chat=false"]
    assert adapt_argv(evaluate, ["--budgets", "-1,0.5", "--baselines=drop-last,angular"]) == [
        "--budgets=[-1,0.5]",
        "--baselines=[drop-last,angular]",
    ]
    assert adapt_argv(evaluate, ["--budgets", "[-1, 0]"]) == ["--budgets", "[-1, 0]"]


def test_every_command_is_the_real_function_and_has_help(capsys):
    from drllm.evaluation.evaluate import run_eval
    from drllm.search.runner import run_search
    from drllm.train.trainer import train_routers

    assert command_function("search") is run_search
    assert command_function("train") is train_routers
    assert command_function("eval") is run_eval
    for name in COMMANDS:
        with pytest.raises(SystemExit) as err:
            main([name, "--help"])
        assert err.value.code == 0
        text = capsys.readouterr().out
        assert f"drllm {name}" in text and "--config" in text
        assert "--tokenizer" not in text and "--routed" not in text


def test_unknown_command_and_bad_flag_name_the_problem(capsys):
    with pytest.raises(SystemExit) as err:
        main(["serach"])
    assert err.value.code == 2 and "unknown command 'serach'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["eval", "--task", "arc_easy", "--output", "x", "--budgets", "a,b"])
    assert err.value.code == 2 and "budgets" in capsys.readouterr().err


def test_generate_prints_completion_and_layers(tiny_model_dir, capsys):
    main(
        [
            "generate",
            "--model",
            tiny_model_dir,
            "--prompt",
            "hello there",
            "--decisions",
            "1,0,2,1",
            "--max-new-tokens",
            "5",
            "--chat",
            "false",
        ]
    )
    out = capsys.readouterr().out
    assert "layers executed per token: 4 of 4" in out and "1021" in out


def test_generate_with_wrong_decisions_names_the_problem(tiny_model_dir, capsys):
    with pytest.raises(SystemExit) as err:
        main(["generate", "--model", tiny_model_dir, "--prompt", "hi", "--decisions", "1,0,2"])
    assert err.value.code == 2
    assert "decisions has 3 columns, the model has 4 layers" in capsys.readouterr().err


def test_search_writes_resumable_rows_that_datasets_loads(tiny_model_dir, mc_file, tmp_path):
    out = tmp_path / "paths.jsonl"
    args = [
        "search",
        "--model",
        tiny_model_dir,
        "--task",
        f"jsonl:{mc_file}",
        "--output",
        str(out),
        "--simulations",
        "6",
        "--batch-size",
        "3",
        "--limit",
        "5",
    ]
    main(args)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5
    for row in rows:
        assert {"id", "task", "model", "prompt", "decisions", "layers", "reward", "base_reward"} <= row.keys()
        assert len(row["decisions"]) == 4 and row["layers"] == sum(row["decisions"])
    before = out.read_text()
    main(args)  # everything is finished: nothing is added
    assert out.read_text() == before
    main(args[:-1] + ["7"])  # a larger limit adds only the new examples
    assert len(out.read_text().splitlines()) == 7
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(out), split="train")
    assert len(ds) == 7 and len(ds[0]["decisions"]) == 4


def test_unknown_task_is_an_error(tiny_model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["search", "--model", tiny_model_dir, "--task", "nope", "--output", str(tmp_path / "x.jsonl")])
    assert "arc_easy" in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(config, capsys):
    command = config.stem.split("_")[0]
    assert command in COMMANDS, f"{config.name} should be named <command>_*.yaml"
    values = yaml.safe_load(config.read_text())
    parser = command_parser(command)
    required = {"paths": "p.jsonl", "output": "out", "task": "arc_easy", "prompt": "hi"}
    args = [
        f"--{k}={v}"
        for k, v in required.items()
        if k not in values and f"--{k}" in parser._option_string_actions
    ]
    cfg = parser.parse_args(["--config", str(config), *args])
    for key, value in values.items():
        assert (list(cfg[key]) if isinstance(cfg[key], tuple) else cfg[key]) == value


def test_search_train_eval_through_the_cli(tiny_model_dir, mc_file, tmp_path):
    paths, routers, evaluation = tmp_path / "paths.jsonl", tmp_path / "routers", tmp_path / "eval"
    task = f"jsonl:{mc_file}"
    main(["search", "--model", tiny_model_dir, "--task", task, "--output", str(paths), "--simulations", "4"])
    main(train_args(tiny_model_dir, paths, routers, "--num-windows", "2"))
    assert json.loads((routers / "router_config.json").read_text())["num_windows"] == 2
    main(
        [
            "eval",
            "--model",
            tiny_model_dir,
            "--task",
            task,
            "--output",
            str(evaluation),
            "--routers",
            str(routers),
            "--budgets",
            "-1,0,2",  # comma lists, as written in the issue and --help
            "--baselines",
            "drop-last",
        ]
    )
    rows = json.loads((evaluation / "results.json").read_text())
    assert [r["method"] for r in rows][:4] == ["base", "routed", "routed", "routed"]
    assert (evaluation / "tradeoff.png").is_file() and (evaluation / "decisions.png").is_file()


@pytest.mark.slow
def test_train_with_ddp_over_two_cpu_processes(tiny_model_dir, mc_file, tmp_path):
    import subprocess

    paths, routers = tmp_path / "paths.jsonl", tmp_path / "routers"
    main(search_args(tiny_model_dir, mc_file, paths))
    cmd = [*SUBPROCESS, *train_args(tiny_model_dir, paths, routers, "--devices", "2", "--strategy", "ddp")]
    cmd += ["--accelerator", "cpu"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "macro_f1" in json.loads((routers / "metrics.json").read_text())
    from drllm.router import RoutedModel

    assert RoutedModel.from_pretrained(tiny_model_dir, routers=routers).routers is not None


def test_search_logs_progress_to_wandb_offline(tiny_model_dir, mc_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    main(
        search_args(
            tiny_model_dir, mc_file, tmp_path / "p.jsonl", "--limit", "4", "--wandb-project", "drllm-test"
        )
    )
    record = offline_record(tmp_path, "wandb/offline-run-*/run-*.wandb", [b"search/improved_share"])
    assert b"search/improved_share" in record


def test_from_pretrained_passes_device_map_and_dtype(tiny_model_dir):
    import torch

    from drllm.router import RoutedModel

    plain = RoutedModel.from_pretrained(tiny_model_dir)
    mapped = RoutedModel.from_pretrained(tiny_model_dir, device_map="auto", dtype=torch.float32)
    assert mapped.device.type == "cpu" and mapped.model.dtype == torch.float32
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    kw = dict(decisions=[1, 0, 2, 1], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(plain.generate(ids, **kw), mapped.generate(ids, **kw))


def test_generate_streams_tokens(tiny_model_dir, capsys):
    completion = main(
        [
            "generate",
            "--model",
            tiny_model_dir,
            "--prompt",
            "hello",
            "--max-new-tokens",
            "4",
            "--chat",
            "false",
            "--stream",  # a bare boolean flag
        ]
    )
    out = capsys.readouterr().out
    assert completion is None  # main returns nothing; the text was streamed
    assert "layers executed per token: 4 of 4" in out and len(out.split("\n[layers")[0]) > 0
