"""The KL objective: teacher data, heuristic start paths, training at a budget, resume identity."""

import json

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

from drllm.router import RoutedModel, Routers
from drllm.search.closeness import batch_tensors, heuristic_paths, path_kl
from drllm.search.teacher import ROWS_NAME, build_teacher, parse_task_split, task_prompts
from drllm.train.kl import KLSettings, start_routers
from drllm.train.trainer import train_routers


def _pool(mc_file, tokenizer):
    return task_prompts([f"jsonl:{mc_file}"], tokenizer)


def test_teacher_is_reused_resumed_after_a_torn_line_and_refused_for_another_length(tmp_path, mc_file):
    routed, tokenizer = RoutedModel(tiny_model("llama")), tiny_tokenizer()
    prompts = _pool(mc_file, tokenizer)
    rows = build_teacher(routed, tokenizer, prompts, tmp_path, tokens=4, batch_size=5, progress=False)
    assert [r["id"] for r in rows] == [p.id for p in prompts]
    assert all(1 <= len(r["continuation"]) <= 4 for r in rows)
    path = tmp_path / ROWS_NAME
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]) + lines[-2][:7])  # a kill mid-write: one row lost, one torn
    again = build_teacher(routed, tokenizer, prompts, tmp_path, tokens=4, batch_size=5, progress=False)
    assert again == rows  # greedy continuations regenerate identically
    assert len(path.read_text().splitlines()) == len(prompts)
    with pytest.raises(ValueError, match="another tokens"):
        build_teacher(routed, tokenizer, prompts, tmp_path, tokens=3, progress=False)


def test_task_split_specs():
    assert parse_task_split("mmlu:dev") == ("mmlu", "dev")
    assert parse_task_split("arc_easy") == ("arc_easy", None)
    assert parse_task_split("jsonl:data/x.jsonl@train") == ("jsonl:data/x.jsonl", "train")
    assert parse_task_split("math:3") == ("math:3", None)


def test_batch_targets_cover_the_continuation_only():
    rows = [{"prompt_ids": [5, 6, 7], "continuation": [8, 9]}, {"prompt_ids": [5], "continuation": [4]}]
    batch = batch_tensors(rows, 0, "cpu")
    assert batch["target"].tolist() == [[0, 0, 1, 1, 0], [1, 0, 0, 0, 0]]
    assert batch["prompt"].tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert batch["attention"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]


def test_heuristic_paths_keep_protected_layers_and_the_level():
    class Stats:
        block_influence = torch.tensor([0.0, 0.1, 0.9, 0.2, 0.8, 0.05])
        angular = torch.rand(7, 7)

    paths = heuristic_paths(Stats(), 6, 4, fixed=[0, 1, 5])
    for path in paths.values():
        assert sum(path) == 4 and path[0] == path[1] == path[5] == 1
    assert paths["block-influence"] == (1, 1, 1, 0, 0, 1) or sum(paths["block-influence"]) == 4


def test_full_path_has_zero_kl_and_start_routers_follow_the_start_path(mc_file):
    routed, tokenizer = RoutedModel(tiny_model("llama")), tiny_tokenizer()
    rows = [
        {"prompt_ids": tokenizer(p.text)["input_ids"], "continuation": [5, 6, 7]}
        for p in _pool(mc_file, tokenizer)[:4]
    ]
    assert max(path_kl(routed, rows, [1, 1, 1, 1], 2, 0)) < 1e-6
    assert min(path_kl(routed, rows, [1, 0, 1, 1], 2, 0)) > 0
    for kind in ("static", "linear", "mlp"):
        routers = routed.add_routers(kind=kind, seed=1)
        start_routers(routers, [1, 0, 1, 1], 2.0)
        ids = torch.tensor([rows[0]["prompt_ids"]])
        assert routed.route(ids).tolist() == [[1, 0, 1, 1]]


def test_kl_training_writes_routers_at_the_level_and_refuses_a_changed_resume(
    tmp_path, tiny_model_dir, mc_file
):
    out = tmp_path / "kl"
    common = dict(
        objective="kl",
        tasks=[f"jsonl:{mc_file}"],
        target_layers=3,
        router="static",
        epochs=2,
        batch_size=4,
        continuation_tokens=3,
        val_fraction=0.25,
        device="cpu",
    )
    metrics = train_routers(tiny_model_dir, output=str(out), **common)
    assert metrics["objective"] == "kl" and metrics["epoch"] == 2
    assert metrics["start"] in ("angular", "block-influence", "greedy-kl")
    assert set(metrics["heuristic_calibration_kl"]) >= {"block-influence", "greedy-kl"}
    assert 2 <= metrics["val_layers"] <= 4 and metrics["val_kl"] >= 0
    routers = Routers.from_pretrained(out)
    assert routers.config.kind == "static"
    run = json.loads((out / "run.json").read_text())
    assert run["target_layers"] == 3 and run["lr"] == 0.05
    assert not {"start", "baseline", "units"} & set(run)  # defaults: the identity older runs were saved with
    assert json.loads((out / "trained_on.json").read_text())["ids"]
    with pytest.raises(ValueError, match="other settings .*lr"):
        train_routers(tiny_model_dir, output=str(out), lr=0.5, **common)
    with pytest.raises(ValueError, match="target-layers"):
        train_routers(tiny_model_dir, output=str(out), objective="kl")
    with pytest.raises(ValueError, match="objective kl"):
        train_routers(tiny_model_dir, paths=str(mc_file), output=str(out), router="static")


def test_settings_identity_is_json_and_defaults_of_new_settings_stay_out():
    identity = json.loads(json.dumps(KLSettings(target_layers=27).identity()))
    assert identity["protected"] == [0, 1, -1] and "baseline" not in identity  # older runs still resume
    assert KLSettings(target_layers=27, baseline="per-prompt").identity()["baseline"] == "per-prompt"


def test_the_skip_shift_holds_the_deployed_level_and_is_folded_into_the_routers(mc_file, tmp_path):
    from drllm.train.kl import fit_kl

    routed, tokenizer = RoutedModel(tiny_model("llama", num_hidden_layers=6)), tiny_tokenizer()
    routed.model.requires_grad_(False)
    rows = build_teacher(routed, tokenizer, _pool(mc_file, tokenizer), tmp_path, tokens=3,
                         progress=False)  # fmt: skip
    routers = routed.add_routers(kind="static")
    start_routers(routers, [1] * 6, 4.0)  # starts at every layer: the shift must make it skip two
    with torch.no_grad():
        routers.static.logits[:, 1] += torch.tensor(
            [0.0, 0.0, 0.3, 0.2, 0.1, 0.0]
        )  # no ties among free layers
    settings = KLSettings(kind="static", target_layers=4, epochs=3, batch_size=4, lr=0.01, dual_lr=0.5)
    history = fit_kl(routed, rows, rows[:4], settings, pad_id=0)
    assert history[-1]["val_layers"] == pytest.approx(4.0)
    ids = torch.tensor([rows[0]["prompt_ids"]])
    assert sum(routed.route(ids)[0].tolist()) == 4  # deployed at budget 0: the shift is in the routers


def test_too_few_prompts_for_validation_warns_and_metrics_say_so(tmp_path, tiny_model_dir, mc_file, caplog):
    """One prompt, 10% held out: nothing is held out, and the run says so instead of reporting val KL."""
    args = dict(objective="kl", tasks=[f"jsonl:{mc_file}"], target_layers=3, router="static", epochs=1)
    args |= dict(batch_size=2, continuation_tokens=2, examples_per_task=1, device="cpu")
    with caplog.at_level("WARNING", logger="drllm.train.kl_run"):
        metrics = train_routers(tiny_model_dir, output=str(tmp_path / "kl"), **args)
    assert "no validation prompts: 10% of 1 prompts rounds to none" in caplog.text
    assert metrics["validation_prompts"] == 0 and "val_kl" not in metrics
