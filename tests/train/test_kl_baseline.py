"""The per-prompt baseline of the score-function estimator, and the greedy-KL start path."""

import functools
import json
import random

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

from drllm.router import Relaxation, RoutedModel, relaxed
from drllm.search.closeness import batch_tensors, greedy_kl_path, path_kl, teacher_log_probs
from drllm.search.gold import gold_options
from drllm.search.teacher import build_teacher, task_prompts
from drllm.train.kl import KLSettings, deployed_cost, fit_kl, path_cost, start_routers, teacher_rows
from drllm.train.trainer import train_routers


def _setup(mc_file, tmp_path, layers=6):
    routed, tokenizer = RoutedModel(tiny_model("llama", num_hidden_layers=layers)), tiny_tokenizer()
    routed.model.requires_grad_(False)
    prompts = task_prompts([f"jsonl:{mc_file}"], tokenizer)
    rows = build_teacher(routed, tokenizer, prompts, tmp_path, tokens=3, progress=False)
    return routed, rows


def test_teacher_rows_are_the_subset_batchs_teacher(mc_file, tmp_path):
    routed, rows = _setup(mc_file, tmp_path)
    chunk = rows[:5]
    teacher = teacher_log_probs(routed, batch_tensors(chunk, 0, "cpu"))
    picked = [1, 3, 4]
    alone = teacher_log_probs(routed, batch_tensors([chunk[b] for b in picked], 0, "cpu"))
    lengths = [len(r["continuation"]) for r in chunk]
    torch.testing.assert_close(teacher_rows(teacher, lengths, picked), alone, atol=1e-5, rtol=1e-5)


def test_deviated_rows_are_those_whose_sample_left_the_argmax(mc_file, tmp_path):
    routed, rows = _setup(mc_file, tmp_path)
    routers = routed.add_routers(kind="static")
    batch = batch_tensors(rows[:6], 0, "cpu")
    for margin, expect_any in ((30.0, False), (0.3, True)):
        start_routers(routers, [1, 1, 0, 1, 0, 1], margin)
        relaxation = Relaxation(routers, fixed=[0, 1, 5], generator=torch.Generator().manual_seed(3))
        with relaxed(routed, relaxation):
            routed.backbone(batch["ids"], batch["attention"], route_mask=batch["prompt"])
        sampled = relaxation.decisions()
        deployed = torch.tensor([1, 1, 0, 1, 0, 1])
        assert relaxation.deviated().tolist() == (sampled != deployed).any(1).tolist()
        assert bool(relaxation.deviated().any()) == expect_any


def test_the_per_prompt_baseline_is_the_deployed_paths_own_kl(mc_file, tmp_path):
    """Each row's reference is the deployed path's KL on that row, whether its sample left it or not."""
    routed, rows = _setup(mc_file, tmp_path)
    routers = routed.add_routers(kind="static")
    path = [1, 1, 0, 1, 1, 1]
    start_routers(routers, path, 1.0)  # samples leave the path often
    chunk = rows[:8]
    teacher = teacher_log_probs(routed, batch_tensors(chunk, 0, "cpu"))
    make = functools.partial(Relaxation, routers, fixed=[0, 1, 5], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        kl, ce, relaxation, extra = path_cost(routed, make, chunk, teacher, 0, None)
    assert extra is None and ce.abs().sum() == 0
    assert relaxation.deviated().any() and not relaxation.deviated().all()
    reference = deployed_cost(routed, relaxation, make, chunk, teacher, 0, None, kl, 0.0)
    expected = torch.tensor(path_kl(routed, chunk, path, 8, 0))
    torch.testing.assert_close(reference, expected, atol=1e-5, rtol=1e-4)
    kept = ~relaxation.deviated()
    torch.testing.assert_close(kl[kept], expected[kept], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "kind, read_layer, actions", [("linear", None, 3), ("mlp", 2, 3), ("linear", None, 5)]
)
def test_the_per_prompt_baseline_with_option_rows_input_routers_and_a_shift(
    mc_file, tmp_path, kind, read_layer, actions
):
    """Against a full rerun of every row on its deployed path (no sampling), with the gold loss weighed in."""
    routed, rows = _setup(mc_file, tmp_path)
    tokenizer = tiny_tokenizer()
    gold = gold_options([f"jsonl:{mc_file}"], tokenizer)
    routers = routed.add_routers(kind=kind, seed=2, read_layer=read_layer, actions=actions)
    with torch.no_grad():
        for head in routers.layers:
            last = head.proj if kind == "linear" else head.net[2]
            last.weight.mul_(20.0)  # decisions that depend on the prompt
    chunk = rows[:8]
    teacher = teacher_log_probs(routed, batch_tensors(chunk, 0, "cpu"))
    make = functools.partial(
        Relaxation,
        routers,
        fixed=[0, 5],
        budget=0.7,
        straight_through=False,
        generator=torch.Generator().manual_seed(4),
    )
    with torch.no_grad():
        kl, ce, relaxation, extra = path_cost(routed, make, chunk, teacher, 0, gold)
        assert extra is not None and relaxation.deviated().any()
        cost = kl + 0.5 * ce + 0.3 * relaxation.layers()[:8]
        reference = deployed_cost(routed, relaxation, make, chunk, teacher, 0, gold, cost, 0.5, price=0.3)
        deployed = functools.partial(make, sample=False)
        full_kl, full_ce, full, _ = path_cost(routed, deployed, chunk, teacher, 0, gold)
    expected = full_kl + 0.5 * full_ce + 0.3 * full.layers()[:8]
    torch.testing.assert_close(reference, expected, atol=1e-4, rtol=1e-4)


def test_per_prompt_training_holds_the_level_and_settings_are_checked(mc_file, tmp_path):
    routed, rows = _setup(mc_file, tmp_path)
    routers = routed.add_routers(kind="static")
    start_routers(routers, [1, 1, 0, 1, 0, 1], 1.0)
    settings = KLSettings(kind="static", target_layers=4, epochs=2, batch_size=4, baseline="per-prompt")
    history = fit_kl(routed, rows, rows[:4], settings, pad_id=0)
    assert history[-1]["val_layers"] == pytest.approx(4.0) and history[-1]["val_kl"] >= 0
    with pytest.raises(ValueError, match="baseline must be one of"):
        fit_kl(routed, rows, [], KLSettings(target_layers=4, baseline="median"), pad_id=0)
    with pytest.raises(ValueError, match="is for the score-function estimator"):
        bad = KLSettings(target_layers=4, baseline="per-prompt", estimator="straight-through")
        fit_kl(routed, rows, [], bad, pad_id=0)


def test_a_greedy_kl_start_is_the_greedy_path_on_the_calibration_prompts(tmp_path, tiny_model_dir, mc_file):
    args = dict(objective="kl", tasks=[f"jsonl:{mc_file}"], target_layers=3, router="static", epochs=1)
    args |= dict(batch_size=4, continuation_tokens=3, val_fraction=0.25, device="cpu")
    metrics = train_routers(
        tiny_model_dir, output=str(tmp_path / "g"), start="greedy-kl", reward_baseline="per-prompt", **args
    )
    assert metrics["start"] == "greedy-kl" and list(metrics["heuristic_calibration_kl"]) == ["greedy-kl"]
    run = json.loads((tmp_path / "g" / "run.json").read_text())
    assert run["start"] == "greedy-kl" and run["baseline"] == "per-prompt" and sum(run["start_path"]) == 3
    teacher = [
        json.loads(line) for line in (tmp_path / "g" / "teacher" / "teacher.jsonl").read_text().splitlines()
    ]
    assert teacher  # the path is greedy's on the run's calibration prompts (the shuffled training rows)
    routed = RoutedModel.from_pretrained(tiny_model_dir)
    random.Random(0).shuffle(teacher)
    train = teacher[: int(round(len(teacher) * 0.75))]
    fixed = [0, 1, routed.num_layers - 1]
    assert list(greedy_kl_path(routed, train[:64], 3, fixed, 4, 0)[0]) == run["start_path"]
    for bad, match in (
        ({"start": "random"}, "start must be one of"),
        ({"reward_baseline": "x"}, "reward_baseline"),
    ):
        with pytest.raises(ValueError, match=match):
            train_routers(tiny_model_dir, output=str(tmp_path / "bad"), **args, **bad)


def test_greedy_paths_nest_and_the_start_is_kept_for_reruns(mc_file, tmp_path):
    from drllm.train.kl_run import GREEDY_NAME, greedy_start

    routed, rows = _setup(mc_file, tmp_path)
    calib, fixed = rows[:8], [0, 1, 5]
    four, _ = greedy_kl_path(routed, calib, 4, fixed, 4, 0)
    three, _ = greedy_kl_path(routed, calib, 3, fixed, 4, 0)
    assert greedy_kl_path(routed, calib, 3, fixed, 4, 0, start=four)[0] == three  # one more round from 4
    with pytest.raises(ValueError, match="start must be a 0/1 path of 6 layers running at least 4"):
        greedy_kl_path(routed, calib, 4, fixed, 4, 0, start=three)
    out = tmp_path / "run"
    assert greedy_start(routed, calib, 3, fixed, 4, 0, out) == three
    saved = json.loads((out / GREEDY_NAME).read_text())
    assert saved["path"] == list(three) and saved["calibration"] == [r["id"] for r in calib]
    (out / GREEDY_NAME).write_text(json.dumps({**saved, "path": [1, 1, 0, 0, 1, 1]}))
    assert greedy_start(routed, calib, 3, fixed, 4, 0, out) == (1, 1, 0, 0, 1, 1)  # reused, not searched
    other = greedy_start(routed, rows[2:10], 3, fixed, 4, 0, out)  # other prompts: searched again
    assert json.loads((out / GREEDY_NAME).read_text())["path"] == list(other)
    assert json.loads((out / GREEDY_NAME).read_text())["calibration"] == [r["id"] for r in rows[2:10]]


def test_a_layer_price_enters_the_cost_and_holds_the_level(mc_file, tmp_path):
    """``budget="price"``: the price rises while too many layers run, and the deployed level is exact."""
    routed, rows = _setup(mc_file, tmp_path)
    routers = routed.add_routers(kind="linear", seed=1)
    start_routers(routers, [1] * 6, 1.0)  # starts above the level: the price must rise
    settings = KLSettings(kind="linear", target_layers=4, epochs=2, batch_size=4, lr=0.01, dual_lr=0.5)
    settings.baseline, settings.budget = "per-prompt", "price"
    history = fit_kl(routed, rows, rows[:4], settings, pad_id=0)
    assert history[0]["layer_price"] > 0 and history[-1]["skip_shift"] == 0.0
    assert history[-1]["val_layers"] == pytest.approx(4.0)
    assert KLSettings(target_layers=4, budget="price").identity()["budget"] == "price"
    with pytest.raises(ValueError, match="budget 'price' is for the score-function estimator"):
        fit_kl(routed, rows, [], KLSettings(target_layers=4, budget="price", estimator="straight-through"), 0)


def test_the_start_margin_sets_the_start_logits_and_is_part_of_the_run(tmp_path, tiny_model_dir, mc_file):
    """``train_kl(start_margin=m)``: a fresh run's static logits start at +m on the start path and -m
    elsewhere, and a rerun with another margin is another run (refused on resume)."""
    from drllm.train.kl_run import train_kl

    args = dict(tasks=[f"jsonl:{mc_file}"], router="static", epochs=1, batch_size=4, continuation_tokens=3)
    args |= dict(val_fraction=0.25, device="cpu", lr=1e-9, start="angular")  # lr ~0: the logits stay put
    train_kl(tiny_model_dir, str(tmp_path / "m"), 3, start_margin=0.75, **args)
    run = json.loads((tmp_path / "m" / "run.json").read_text())
    assert run["start_margin"] == 0.75
    routed = RoutedModel.from_pretrained(tiny_model_dir)
    routed.load_routers(tmp_path / "m")
    logits = routed.routers.static.logits.detach()
    start = torch.tensor(run["start_path"])
    # the folded shift moves only the skip column; the execute (1) and repeat (2) columns keep +-0.75
    assert torch.allclose(logits[start == 1, 1], torch.full_like(logits[start == 1, 1], 0.75), atol=1e-4)
    assert torch.allclose(logits[:, 2], torch.full_like(logits[:, 2], -0.75), atol=1e-4)
    skip = logits[:, 0]  # +-0.75 plus one shift: skipped layers lead executed ones by twice the margin
    assert torch.allclose(skip[start == 0].min() - skip[start == 1].max(), torch.tensor(1.5), atol=1e-3)
    with pytest.raises(ValueError, match="start_margin"):
        train_kl(tiny_model_dir, str(tmp_path / "m"), 3, start_margin=2.0, **args)


def test_train_routers_passes_the_start_margin_and_refuses_a_bad_one(tmp_path, tiny_model_dir, mc_file):
    args = dict(objective="kl", tasks=[f"jsonl:{mc_file}"], target_layers=3, router="static", epochs=1)
    args |= dict(batch_size=4, continuation_tokens=3, val_fraction=0.25, device="cpu", start="angular")
    train_routers(tiny_model_dir, output=str(tmp_path / "a"), start_margin=0.5, **args)
    assert json.loads((tmp_path / "a" / "run.json").read_text())["start_margin"] == 0.5
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="start_margin must be a number > 0"):
            train_routers(tiny_model_dir, output=str(tmp_path / "b"), start_margin=bad, **args)
    with pytest.raises(ValueError, match="start_margin: flags of --objective kl"):
        train_routers(tiny_model_dir, "p.jsonl", str(tmp_path / "c"), start_margin=1.0)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
