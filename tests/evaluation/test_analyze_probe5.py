"""Hostile inputs to drllm analyze and drllm signal: outputs written by others, ignored flags."""

import json

import pytest
from task_files import choice_file
from tiny_models import tiny_model, tiny_tokenizer

from drllm.evaluation.analysis import analyze_depth, run_analysis, write_analysis
from drllm.evaluation.signal import run_signal
from drllm.router import RoutedModel

MISSING_MODEL = "/nonexistent/model-folder"  # loading it would fail: a refusal must come first


def test_analyze_refuses_a_folder_written_by_another_command_and_keeps_its_report(tmp_path):
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "report.md").write_text("# the demo's own report\n")
    (demo / "results.json").write_text("[]\n")
    task = choice_file(tmp_path / "mc.jsonl", n=3)
    with pytest.raises(ValueError, match=rf"--output {demo} is not empty.*its report.md would be replaced"):
        run_analysis(MISSING_MODEL, task, str(demo), limit=3)
    assert (demo / "report.md").read_text() == "# the demo's own report\n"
    assert sorted(p.name for p in demo.iterdir()) == ["report.md", "results.json"]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep\n")
    with pytest.raises(ValueError, match="not empty.*it holds todo.txt"):
        run_analysis(MISSING_MODEL, task, str(notes), limit=3)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "analysis.json").write_text('{"something": "else"}\n')  # not analyze's
    with pytest.raises(ValueError, match="its analysis.json would be replaced"):
        run_analysis(MISSING_MODEL, task, str(foreign), limit=3)


def test_analyze_refuses_an_output_that_is_a_file_before_any_work(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("mine\n")
    task = choice_file(tmp_path / "mc.jsonl", n=3)
    with pytest.raises(ValueError, match=rf"--output {target} is a file; drllm analyze writes a folder"):
        run_analysis(MISSING_MODEL, task, str(target), limit=3)
    assert target.read_text() == "mine\n"
    with pytest.raises(FileNotFoundError, match="does not exist"):  # a failed run leaves no empty folder
        run_analysis(MISSING_MODEL, task, str(tmp_path / "new" / "analysis"), limit=3)
    assert not (tmp_path / "new").exists()


def test_analyze_rerun_replaces_its_own_files_as_a_set_and_keeps_others(tmp_path):
    routed, tok = RoutedModel(tiny_model("llama")), tiny_tokenizer()
    task = choice_file(tmp_path / "mc.jsonl", n=2)
    result = analyze_depth(routed, tok, task, limit=2, decisions="1,0,1,1", fidelity_tokens=1, batch_size=2)
    out = tmp_path / "analysis"
    write_analysis(result, out)
    assert (out / "overlay.png").is_file()
    (out / "notes.txt").write_text("mine\n")  # a file of the user's beside analyze's
    plain = {**result, "overlays": {}, "model": "rerun"}
    write_analysis(plain, out)
    names = sorted(p.name for p in out.iterdir())
    assert "overlay.png" not in names, "the earlier run's overlay would describe another run"
    assert names == sorted(
        ["analysis.json", "angular.png", "logit_lens.png", "notes.txt", "report.md", "residual.png"]
        + ["sensitivity.png"]
    )
    assert (out / "notes.txt").read_text() == "mine\n"
    assert json.loads((out / "analysis.json").read_text())["model"] == "rerun"
    assert "rerun" in (out / "report.md").read_text()


def test_signal_refuses_flags_its_target_ignores(tmp_path):
    out = str(tmp_path / "s")
    with pytest.raises(ValueError, match="--paths is read by --target margin only"):
        run_signal(MISSING_MODEL, paths=str(tmp_path / "p.jsonl"), output=out, target="kl")
    with pytest.raises(ValueError, match="--tasks is read by --target kl only"):
        run_signal(MISSING_MODEL, paths=str(tmp_path / "p.jsonl"), output=out, tasks=["arc_easy"])
    with pytest.raises(ValueError, match="--examples-per-task, --threshold are read by --target kl only"):
        run_signal(MISSING_MODEL, str(tmp_path / "p.jsonl"), out, examples_per_task=5, threshold=0.2)
    assert not (tmp_path / "s").exists()


def test_signal_kl_passes_the_dtype_on(monkeypatch, tmp_path):
    seen = {}

    def fake(*args):
        seen["args"] = args
        return {}

    monkeypatch.setattr("drllm.evaluation.kl_signal.run_kl_signal", fake)
    run_signal("m", output=str(tmp_path / "s"), target="kl", dtype="bfloat16")
    assert seen["args"][-1] == "bfloat16"
