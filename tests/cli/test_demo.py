"""``run_demo`` end to end on a tiny random model: skipping finished stages, redoing changed ones."""

import hashlib
import json

import pytest
from task_files import choice_file
from tiny_models import tiny_model, tiny_tokenizer

from drllm.cli import demo
from drllm.router import RoutedModel
from drllm.search.records import read_records


def test_demo_end_to_end_and_resume(tmp_path, monkeypatch):
    task = choice_file(tmp_path / "mc.jsonl", n=6)
    out = tmp_path / "demo"
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    kwargs = dict(
        output=str(out),
        model="tiny",
        task=task,
        train_examples=6,
        eval_examples=4,
        simulations=4,
        epochs=1,
        target_layers=(3, 2),
        calibration=4,
        tokenizer=tiny_tokenizer(),
    )
    first = demo.run_demo(routed=routed, **kwargs)
    text = (out / "report.md").read_text()
    for piece in ("## Search", "Macro F1", "| method |", "eval/tradeoff.png", "eval/decisions.png"):
        assert piece in text
    assert (out / "paths.jsonl").is_file() and (out / "routers" / "routers.safetensors").is_file()
    assert {r.method for r in first["eval"]} >= {
        "base",
        "routed",
        "greedy",
        "routed-random",
        "routed-majority",
        "routed-static",
    }
    assert "Verdict:" in text and "significant" in text
    # the pipeline by default: the sweep, soft targets, one-shot shared routers, routed-static
    records = read_records(out / "paths.jsonl")
    assert all(len(r.supervision["sweep"]["skip"]) == routed.num_layers for r in records)
    config = json.loads((out / "routers" / "router_config.json").read_text())
    assert config["kind"] == "shared" and config["read_layer"] == 2
    assert "Router head `shared`, all reading the input of layer 2" in text and "soft targets" in text
    exported = sorted(p.name for p in (out / "eval").glob("routers-at-*"))
    assert exported == ["routers-at-2", "routers-at-3"]
    assert text.count("The exported routers") == 2
    assert "- layers run per prompt: " in text

    def fail(*args, **kw):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(demo, "train_routers", fail)
    monkeypatch.setattr(demo, "run_eval", fail)
    fresh = RoutedModel.from_pretrained(tiny_model("llama"))
    second = demo.run_demo(routed=fresh, **kwargs)
    assert second["eval"] == first["eval"] and second["train"] == first["train"]
    assert fresh.routers is not None  # the saved routers were loaded
    with pytest.raises(AssertionError, match="ran again"):
        demo.run_demo(routed=fresh, **{**kwargs, "epochs": 2})


def test_demo_searches_again_when_the_simulations_change(tmp_path):
    task = choice_file(tmp_path / "mc.jsonl", n=6)
    out = tmp_path / "demo"
    kwargs = dict(
        output=str(out),
        model="tiny",
        task=task,
        train_examples=4,
        eval_examples=2,
        simulations=2,
        epochs=1,
        target_layers=(3,),
        baselines=("drop-last",),
        calibration=2,
        greedy_examples=2,
        tokenizer=tiny_tokenizer(),
    )
    demo.run_demo(routed=RoutedModel.from_pretrained(tiny_model("llama")), **kwargs)
    paths = out / "paths.jsonl"
    before = paths.read_bytes()
    assert {r.settings["simulations"] for r in read_records(paths)} == {2}

    demo.run_demo(routed=RoutedModel.from_pretrained(tiny_model("llama")), **{**kwargs, "simulations": 3})
    assert {r.settings["simulations"] for r in read_records(paths)} == {3}, "searched again, not reused"
    (old,) = out.glob("paths.jsonl.old-*")
    assert old.read_bytes() == before, "the 2-simulation paths are kept aside"
    trained = json.loads((out / "routers" / "run.json").read_text())
    assert trained["paths_sha256"] == hashlib.sha256(paths.read_bytes()).hexdigest()[:16]
    assert json.loads((out / "eval" / ".done").read_text())["simulations"] == 3


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"router": "nope"}, "router must be one of mlp, linear, shared, knn, got 'nope'"),
        ({"targets": "fuzzy"}, "targets must be one of hard, soft, got 'fuzzy'"),
        ({"read_layer": 4}, r"read_layer must be a layer of the model \(0 to 3\) or None, got 4"),
        ({"target_layers": (99,)}, "99"),
    ],
)
def test_demo_refuses_a_bad_router_setting_before_writing_anything(tmp_path, bad, message):
    out = tmp_path / "demo"
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    with pytest.raises(ValueError, match=message):
        demo.run_demo(output=str(out), task="arc_easy", routed=routed, tokenizer=tiny_tokenizer(), **bad)
    assert not out.exists(), "a refusal leaves no empty output folder behind"
