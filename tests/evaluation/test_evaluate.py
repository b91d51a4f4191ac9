"""``run_eval`` on tiny random models: matched compute, intervals, paired tests, files, parity."""

import json

import pytest
import torch
from task_files import choice_file, exact_file
from tiny_models import prompts, tiny_model, tiny_tokenizer

from drllm.evaluation.evaluate import BudgetCalibrator, decision_rates, run_eval
from drllm.evaluation.report import read_results
from drllm.router import RoutedModel, batch_prompts, encode_prompt
from drllm.search.tasks import get_task


def ladder_routers(routed):
    """Constant routers: layer i's skip logit is i - 1.5 + budget: budget b skips every layer i > 1.5 - b."""
    routed.add_routers(num_windows=2, bottleneck=8)
    with torch.no_grad():
        for i, router in enumerate(routed.routers.layers):
            last = router.net[2]
            last.weight.zero_()
            last.bias.copy_(torch.tensor([i - 1.5, 0.0, -9.0]))


def plain_accuracy(model, tokenizer, task_name):
    """Accuracy of option log-likelihood scoring with the unwrapped model, one prompt + option at a time."""
    task = get_task(task_name)
    right = []
    for ex in task.load():
        prompt = encode_prompt(tokenizer, task.prompt(ex, tokenizer))
        scores = []
        for option in task.continuations(ex, "mc-loglik", tokenizer=tokenizer):
            cont = tokenizer(option, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = model(torch.tensor([prompt + cont])).logits[0].log_softmax(-1)
            scores.append(sum(float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(cont)))
        right.append(max(range(len(scores)), key=scores.__getitem__) == ex.answer)
    return sum(right) / len(right)


def test_base_row_matches_transformers_and_files_are_written(tmp_path):
    task = choice_file(tmp_path / "mc.jsonl", n=8)
    tok = tiny_tokenizer()
    routed = RoutedModel.from_pretrained(tiny_model("llama", seed=3))
    out = tmp_path / "out"
    rows = run_eval(
        routed,
        task,
        str(out),
        tokenizer=tok,
        batch_size=3,
        calibration=4,
        target_layers=(3, 2),
        baselines=("drop-last", "angular", "block-influence", "greedy"),
        fidelity_tokens=4,
    )
    base = rows[0]
    assert base.method == "base" and base.layers == 4 and base.n == 8
    assert base.accuracy.value == pytest.approx(plain_accuracy(tiny_model("llama", seed=3), tok, task))
    assert base.accuracy.low <= base.accuracy.value <= base.accuracy.high
    assert base.agreement.value == 1.0 and base.fidelity.value == pytest.approx(4.0)
    static = [r for r in rows if r.method != "base"]
    assert {(r.method, r.level) for r in static} == {
        (m, lv) for m in ("greedy", "block-influence", "angular", "drop-last") for lv in (3, 2)
    }
    for r in static:
        assert sum(r.path) == r.level == r.layers and r.path[-1] == 1  # exact level, final layer kept
        assert r.vs_base.against == "base" and 0.0 <= r.vs_base.p_value <= 1.0
    best = {lv: max((r for r in static if r.level == lv), key=lambda r: r.accuracy.value) for lv in (3, 2)}
    for r in static:
        if r is not best[r.level]:
            assert r.vs_static.against in ("greedy", "block-influence", "angular", "drop-last")
    for name in (
        "results.json",
        "results.md",
        "examples.jsonl",
        "decisions.json",
        "tradeoff.png",
        "decisions.png",
    ):
        assert (out / name).is_file(), name
    reread = {(r.method, r.level): r for r in read_results(out / "results.json")}
    assert reread[("base", None)] == base
    lines = [json.loads(x) for x in (out / "examples.jsonl").read_text().splitlines()]
    assert len(lines) == 8 * len(rows)
    mine = [x for x in lines if x["method"] == "drop-last" and x["level"] == 2]
    assert sum(x["correct"] for x in mine) / 8 == pytest.approx(reread[("drop-last", 2)].accuracy.value)
    text = (out / "results.md").read_text()
    assert "## Findings" in text and "significant" in text and "[95% CI]" in text


def test_routers_are_matched_to_each_level_and_compared_with_controls(tmp_path):
    task = choice_file(tmp_path / "mc.jsonl", n=6)
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    ladder_routers(routed)
    rows = run_eval(
        routed,
        task,
        str(tmp_path / "out"),
        tokenizer=tiny_tokenizer(),
        target_layers=(3, 2),
        budgets=(5.0,),
        baselines=("drop-last", "random"),
        random_seeds=2,
        calibration=4,
        batch_size=4,
        fidelity_tokens=3,
    )
    by = {(r.method, r.level, r.seed): r for r in rows}
    for level in (3, 2):
        r = by[("routed", level, None)]
        assert r.layers == level and r.calibration_layers == level  # constant routers: exact on both splits
        assert r.vs_static.against == "drop-last"
        assert by[("routed-majority", level, None)].path == [1] * level + [0] * (4 - level)
        assert by[("routed-random", level, 0)].layers == level  # rates are 0/1 here: the same paths
        assert ("random", level, 0) in by and ("random", level, 1) in by
    assert by[("routed", None, None)].budget == 5.0 and by[("routed", None, None)].layers == 0
    assert routed.budget == 0.0
    saved = json.loads((tmp_path / "out" / "decisions.json").read_text())
    assert [1, 1, 0, 0] in next(d["decisions"] for d in saved if d["level"] == 2)


def test_budget_calibrator_and_rates():
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    ladder_routers(routed)
    ids, mask = batch_prompts(tiny_tokenizer(), ["hello there", "a b c d e"])
    cal = BudgetCalibrator(routed, [(ids, mask)])
    for level in (4, 3, 2, 1):
        budget, reached, decisions = cal.budget_for(level)
        assert reached == level and all(sum(d) == level for d in decisions)
        assert routed.budget == 0.0
    assert decision_rates([[0, 1, 2], [1, 1, 2]]) == [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def test_exact_answers_by_generation_and_several_tasks(tmp_path):
    exact = exact_file(tmp_path / "ex.jsonl", n=4)
    choice = choice_file(tmp_path / "mc.jsonl", n=4)
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    rows = run_eval(
        routed,
        f"{exact},{choice}",
        str(tmp_path / "out"),
        tokenizer=tiny_tokenizer(),
        target_layers=(3,),
        baselines=("drop-last",),
        calibration=2,
        max_new_tokens=3,
        fidelity_tokens=3,
    )
    assert {r.task for r in rows} == {exact, choice, "pooled"}
    assert all(r.fidelity is not None for r in rows)
    assert (tmp_path / "out" / "results.json").is_file()
    assert len([p for p in (tmp_path / "out").iterdir() if p.is_dir()]) == 2


def test_bad_arguments_name_the_problem(tmp_path):
    task = choice_file(tmp_path / "mc.jsonl", n=3)
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="known baselines: greedy"):
        run_eval(routed, task, str(tmp_path / "o"), tokenizer=tok, baselines=("nope",))
    with pytest.raises(ValueError, match=r"target layers must lie in 1..3"):
        run_eval(routed, task, str(tmp_path / "new" / "o"), tokenizer=tok, target_layers=(4,))
    assert not (tmp_path / "new").exists(), "a refusal leaves no empty output folder behind"
    with pytest.raises(ValueError, match="unknown task"):
        run_eval(routed, "nope", str(tmp_path / "o"), tokenizer=tok)


def test_routed_static_runs_its_static_path_where_no_router_is_confident_enough(tmp_path):
    """Ladder routers on 4 layers, layers 0, 1 and 3 protected: only layer 2 may deviate, and its router
    prefers skipping by a probability gap of 0.245, below every threshold tried. So ``routed-static`` is
    the level's best static path, example for example."""
    task = choice_file(tmp_path / "mc.jsonl", n=6)
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    ladder_routers(routed)
    out = tmp_path / "out"
    common = dict(tokenizer=tiny_tokenizer(), target_layers=(3, 2), baselines=("drop-last",), calibration=4)
    rows = run_eval(routed, task, str(out), batch_size=4, fidelity_tokens=2, **common)
    by = {(r.method, r.level): r for r in rows}
    examples = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    for level in (3, 2):
        r = by[("routed-static", level)]
        assert r.layers == level and r.path == by[("drop-last", level)].path
        mine = [
            (e["id"], e["score"]) for e in examples if e["method"] == "routed-static" and e["level"] == level
        ]
        static = [
            (e["id"], e["score"]) for e in examples if e["method"] == "drop-last" and e["level"] == level
        ]
        assert mine == static
        exported = RoutedModel.from_pretrained(tiny_model("llama"), routers=out / f"routers-at-{level}")
        config = exported.routers.config
        assert (config.default_path, config.threshold, config.protected) == (r.path, 1.0, [0, 1, 3])
        assert "no per-input signal shown" in config.verdict and f"{level} layers" in config.verdict
        ids, mask = prompts()
        assert exported.route(ids, mask).tolist() == [r.path] * ids.shape[0]  # the static path, every row
    assert (out / "verdict.md").read_text().count("no per-input signal shown") == 2
    assert routed.routers.config.default_path == [] and routed.routers.config.threshold is None
    off = run_eval(routed, task, str(tmp_path / "off"), batch_size=4, route_from_static=False, **common)
    assert not [r for r in off if r.method == "routed-static"]


def test_routed_static_deviates_only_while_the_level_holds(tmp_path):
    """Layer 2's router is sure it should skip.

    From drop-last's 3-layer path that would run 2 layers, off the level, so threshold 1.0 (no deviation)
    is kept there; from the 2-layer path skipping is the default.
    """
    task = choice_file(tmp_path / "mc.jsonl", n=6)
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    ladder_routers(routed)
    with torch.no_grad():
        routed.routers.layers[2].net[2].bias.copy_(torch.tensor([8.0, 0.0, -9.0]))
    rows = run_eval(
        routed,
        task,
        str(tmp_path / "out"),
        tokenizer=tiny_tokenizer(),
        target_layers=(3, 2),
        baselines=("drop-last",),
        calibration=4,
        batch_size=4,
        fidelity_tokens=0,
    )
    by = {(r.method, r.level): r for r in rows}
    assert by[("routed-static", 3)].layers == 3 and by[("routed-static", 2)].layers == 2


def test_calibration_leaves_out_the_examples_the_routers_were_trained_on(tmp_path, monkeypatch):
    from drllm.evaluation import evaluate

    task = choice_file(tmp_path / "mc.jsonl", n=8)
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    ladder_routers(routed)
    folder = tmp_path / "routers"
    routed.save_pretrained(folder)
    seen = []
    original = evaluate._TaskEvaluation._routed_methods

    def recording(self, calib):
        seen.append([ex.id for ex in calib])
        return original(self, calib)

    monkeypatch.setattr(evaluate._TaskEvaluation, "_routed_methods", recording)
    common = dict(tokenizer=tiny_tokenizer(), target_layers=(3,), baselines=("drop-last",), batch_size=4)
    common.update(random_seeds=0, fidelity_tokens=0, route_from_static=False)
    run_eval(routed, task, str(tmp_path / "a"), routers=str(folder), calibration=4, **common)
    assert seen[-1] == ["q0", "q1", "q2", "q3"], "without trained_on.json: the first examples"
    (folder / "trained_on.json").write_text(json.dumps({"ids": ["q0", "q2", "q3", "q4", "q5"]}))
    run_eval(
        routed,
        task,
        str(tmp_path / "b"),
        routers=str(folder),
        calibration=4,
        **{**common, "route_from_static": True},
    )
    assert seen[-1] == ["q1", "q6", "q7"], "only examples the routers never saw"
    exported = json.loads((tmp_path / "b" / "routers-at-3" / "trained_on.json").read_text())
    want = {"ids": ["*/q0", "*/q2", "*/q3", "*/q4", "*/q5"], "qualified": True}  # an older file's bare ids
    assert exported == want, "the export keeps what the routers saw"
    (folder / "trained_on.json").write_text(json.dumps({"ids": [f"q{i}" for i in range(8)]}))
    with pytest.raises(ValueError, match="trained on every example of .* none is left to calibrate on"):
        run_eval(routed, task, str(tmp_path / "c"), routers=str(folder), calibration=4, **common)
    (folder / "trained_on.json").write_text('{"ids": [1, 2]}')
    with pytest.raises(ValueError, match="trained_on.json: 'ids' must be a list of strings"):
        run_eval(routed, task, str(tmp_path / "d"), routers=str(folder), calibration=4, **common)
    assert not (tmp_path / "d").exists(), "refused before anything is written"


def test_calibration_never_uses_an_evaluated_example_when_others_exist(tmp_path, caplog):
    """A single-split task evaluated in part calibrates on the rest; evaluated whole, its titles say so."""
    task = choice_file(tmp_path / "mc.jsonl", n=10)
    tok = tiny_tokenizer()
    routed = RoutedModel.from_pretrained(tiny_model("llama", seed=3))
    common = dict(tokenizer=tok, batch_size=4, calibration=10, target_layers=(3,), baselines=("angular",))
    run_eval(routed, task, str(tmp_path / "part"), limit=6, fidelity_tokens=0, **common)
    assert "calibrating on the 4 all examples that are not evaluated" in caplog.text
    run_eval(routed, task, str(tmp_path / "whole"), fidelity_tokens=0, **common)
    assert "calibrated on the evaluated examples" in (tmp_path / "whole" / "results.md").read_text()


def test_a_rerun_leaves_no_stale_result_and_a_full_disk_keeps_the_old_ones(tmp_path, monkeypatch):
    import errno

    from drllm.evaluation import report as report_module

    task = choice_file(tmp_path / "mc.jsonl", n=6)
    out = tmp_path / "out"
    common = dict(tokenizer=tiny_tokenizer(), batch_size=3, calibration=3, target_layers=(3,))
    routed = RoutedModel.from_pretrained(tiny_model("llama", seed=3))
    run_eval(routed, task, str(out), baselines=("drop-last",), fidelity_tokens=2, **common)
    (out / "routers-at-9").mkdir()
    (out / "routers-at-9" / "router_config.json").write_text("{}")
    (out / "verdict.md").write_text("- an old verdict\n")
    (out / "notes.txt").write_text("mine")
    before = (out / "results.json").read_bytes()

    real = report_module.atomic_write_text

    def full_disk(path, text):
        if str(path).endswith("examples.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(report_module, "atomic_write_text", full_disk)
    with pytest.raises(OSError, match="no space left while writing .*examples.jsonl; the earlier results"):
        run_eval(routed, task, str(out), baselines=("angular",), fidelity_tokens=2, **common)
    assert (out / "results.json").read_bytes() == before and (out / "verdict.md").exists()
    assert not list(out.glob(".staging-*"))
    monkeypatch.setattr(report_module, "atomic_write_text", real)
    run_eval(routed, task, str(out), baselines=("angular",), fidelity_tokens=2, **common)
    assert not (out / "routers-at-9").exists() and not (out / "verdict.md").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert (
        "angular" in (out / "results.md").read_text() and "drop-last" not in (out / "results.md").read_text()
    )


def test_routers_that_miss_their_level_are_not_compared_with_static_paths_of_it():
    from drllm.evaluation.report import findings
    from drllm.evaluation.results import method_rows
    from drllm.evaluation.task_eval import _Method
    from drllm.search.evaluator import Outcome

    def method(name, layers, rewards, level=3):
        m = _Method(name, level, path=(1, 1, 1, 0) if name != "routed" else None)
        m.outcomes = [Outcome(float(r)) for r in rewards]
        m.layers, m.tokens, m.decisions = [layers] * len(rewards), [5] * len(rewards), []
        return m

    base = method("base", 4, [1, 1, 0, 1], level=None)
    rows = method_rows(
        "t", [base, method("angular", 3, [1, 0, 0, 1]), method("routed", 3.9, [1, 1, 0, 1])], "mc-loglik"
    )
    routed = next(r for r in rows if r.method == "routed")
    assert routed.vs_static is None and routed.vs_base is not None
    assert any("missed its level of 3 layers" in line for line in findings(rows))


def test_training_ids_count_only_in_their_own_task(tmp_path):
    from drllm.evaluation.calibration import trained_on, was_trained

    folder = tmp_path / "r"
    folder.mkdir()
    task = choice_file(tmp_path / "mc.jsonl", n=4)
    (folder / "trained_on.json").write_text(
        json.dumps({"ids": [f"{task}/q0", "arc_easy/q1"], "qualified": True})
    )
    keys = trained_on(folder)
    assert was_trained(keys, task, "q0") and not was_trained(keys, task, "q1")
    assert not was_trained(keys, "jsonl:other.jsonl", "q0")  # the same id in another file is another question
    (folder / "trained_on.json").write_text(json.dumps({"ids": ["q0"]}))  # an older file: bare ids, any task
    assert was_trained(trained_on(folder), "jsonl:other.jsonl", "q0")
