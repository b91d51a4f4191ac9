"""drllm analyze on tiny random models: every analysis on every architecture, checked against naive and
explicit computations, the files it writes and the command."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from task_files import choice_file
from tiny_models import ARCHITECTURES, explicit_model, plain_layer_states, prompts, tiny_model, tiny_tokenizer

from drllm.cli.__main__ import main
from drllm.evaluation.analysis import (
    analyze_depth,
    effective_depth,
    lens_logits,
    lens_metrics,
    path_states,
    run_analysis,
    spearman,
)
from drllm.router import RoutedModel, encode_prompt
from drllm.search.evaluator import PathEvaluator
from drllm.search.records import SearchRecord
from drllm.search.tasks import get_task

ATOL = 1e-4


def _final_norm(model):
    base = model.base_model
    return next(getattr(base, n) for n in ("norm", "ln_f", "final_layer_norm") if hasattr(base, n))


def _softcap(model, logits):
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def _plain_states(model, ids):
    """Hidden states entering every layer of a plain (unwrapped) model, then its last layer's output."""
    with plain_layer_states(model) as seen, torch.no_grad():
        logits = model(input_ids=ids).logits
    return [s[0] for s in seen], logits[0]


def _analysed_prompts(result, task, tok):
    task_obj = get_task(task)
    examples = task_obj.load(result["split"], limit=result["prompts"])
    return [task_obj.prompt(ex, tok, style=result["style"]) for ex in examples]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_analysis_runs_on_every_architecture(arch, tmp_path):
    routed, tok = RoutedModel(tiny_model(arch)), tiny_tokenizer()
    routed.add_routers(num_windows=2, bottleneck=8, seed=3)
    routed.budget = 0.7
    task = choice_file(tmp_path / "mc.jsonl", n=3)
    result = analyze_depth(routed, tok, task, limit=3, decisions="1,0,2,1", fidelity_tokens=2, batch_size=2)
    L = 4
    assert result["num_layers"] == L and result["prompts"] == 3
    geometry = result["residual_geometry"]
    assert len(geometry["relative_update_norm"]) == L and all(v > 0 for v in geometry["relative_update_norm"])
    assert all(-1 <= c <= 1 for c in geometry["update_cosine"])
    angular = result["angular_distance"]
    assert len(angular["d"]) == L + 1 and angular["d"][0][0] == pytest.approx(0.0, abs=1e-3)
    assert [b["n"] for b in angular["pruned_block"]] == [1, 2, 3]
    assert all(3 not in b["layers"] for b in angular["pruned_block"])  # the final layer is kept
    lens = result["logit_lens"]
    assert lens["kl_final_to_lens"][-1] == pytest.approx(0.0, abs=1e-6) and lens["top5_overlap"][-1] == 1.0
    assert lens["final_top1_rank"][-1] == 0 and all(v >= 0 for v in lens["kl_lens_to_final"])
    for name in ("kl", "top5"):
        assert 1 <= lens["effective_depth"][name]["depth"] <= L
    sensitivity = result["sensitivity"]
    for kind in ("skip", "repeat"):
        for key in ("delta_reward", "delta_margin", "delta_fidelity"):
            column = sensitivity[kind][key]
            assert len(column) == L and all(c["low"] <= c["value"] <= c["high"] for c in column)
    overlays = result["overlays"]
    assert set(overlays) == {"routers", "decisions"} and routed.budget == 0.7
    ids = [encode_prompt(tok, p) for p in _analysed_prompts(result, task, tok)]
    routed.budget = 0.0
    alone = [
        routed.route(torch.tensor([i]), torch.ones(1, len(i), dtype=torch.long))[0].tolist() for i in ids
    ]
    assert overlays["routers"]["decisions"] == alone  # the routers' own decisions at budget 0
    fixed = overlays["decisions"]
    assert fixed["skip_share"] == [0, 1, 0, 0] and fixed["repeat_share"] == [0, 0, 1, 0]
    assert fixed["effective_depth"]["routed"]["kl"]["ratio"]["value"] <= 1.0
    assert set(fixed["spearman"]["skip_share"]) >= {
        "relative_update_norm",
        "block_influence",
        "skip_delta_margin",
    }


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_lens_along_a_routed_path_equals_the_explicit_model(arch):
    overrides = {"final_logit_softcapping": 2.0} if arch == "gemma3_text" else {}
    model = tiny_model(arch, **overrides)
    decisions = torch.tensor([[1, 0, 2, 1], [2, 1, 0, 2], [0, 2, 2, 1]])
    explicit = [explicit_model(model, d.tolist()) for d in decisions]
    ids, mask = prompts(batch=3, length=9, pad_rows=2)
    routed = RoutedModel(model)
    seqs = path_states(routed, ids, mask, decisions)
    for r in range(3):
        states, logits = _plain_states(explicit[r], ids[r : r + 1, mask[r].bool()])
        assert len(seqs[r]) == int(decisions[r].sum()) + 1 == len(states)
        want = _softcap(
            explicit[r], explicit[r].get_output_embeddings()(_final_norm(explicit[r])(torch.stack(states)))
        )
        got = lens_logits(routed, seqs[r])
        torch.testing.assert_close(got, want[:, -1], atol=ATOL, rtol=0)
        torch.testing.assert_close(
            got[-1], logits[-1], atol=ATOL, rtol=0
        )  # the last state is the model's output
        metrics = lens_metrics(got)
        assert metrics["kl_final_to_lens"][-1] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text"])
def test_residual_angular_and_lens_equal_a_naive_per_prompt_computation(arch, tmp_path):
    model = tiny_model(arch)
    plain = copy.deepcopy(model)
    tok = tiny_tokenizer()
    task = choice_file(tmp_path / "mc.jsonl", n=5)
    result = analyze_depth(RoutedModel(model), tok, task, limit=5, fidelity_tokens=0, batch_size=2)
    L = 4
    norm, cosine, tokens = np.zeros(L), np.zeros(L), 0
    angular, kl = np.zeros((L + 1, L + 1)), np.zeros(L + 1)
    texts = _analysed_prompts(result, task, tok)
    for text in texts:  # each prompt alone, unpadded, through the plain model
        states, _ = _plain_states(plain, torch.tensor([encode_prompt(tok, text)]))
        for i in range(L):
            for t in range(1, states[i].shape[0]):  # every token but the first
                h, update = states[i][t].double(), (states[i + 1][t] - states[i][t]).double()
                norm[i] += float(update.norm() / h.norm())
                cosine[i] += float(update @ h / (update.norm() * h.norm()))
        tokens += states[0].shape[0] - 1
        for start in range(L + 1):
            for n in range(L + 1 - start):
                a, b = states[start][-1].double(), states[start + n][-1].double()
                angular[start, n] += (
                    math.acos(max(-1.0, min(1.0, float(a @ b / (a.norm() * b.norm()))))) / math.pi
                )
        with torch.no_grad():
            logits = plain.get_output_embeddings()(_final_norm(plain)(torch.stack([s[-1] for s in states])))
        logp = logits.double().log_softmax(-1)
        kl += (logp[-1].exp() * (logp[-1] - logp)).sum(-1).numpy()
    geometry = result["residual_geometry"]
    assert geometry["tokens"] == tokens
    np.testing.assert_allclose(geometry["relative_update_norm"], norm / tokens, atol=ATOL)
    np.testing.assert_allclose(geometry["update_cosine"], cosine / tokens, atol=ATOL)
    for start in range(L + 1):
        for n in range(1, L + 1 - start):
            assert result["angular_distance"]["d"][start][n] == pytest.approx(
                angular[start, n] / len(texts), abs=ATOL
            )
    np.testing.assert_allclose(result["logit_lens"]["kl_final_to_lens"], kl / len(texts), atol=ATOL)


def test_sensitivity_equals_each_path_scored_alone(tmp_path):
    routed, tok = RoutedModel(tiny_model("qwen2")), tiny_tokenizer()
    task = choice_file(tmp_path / "mc.jsonl", n=4)
    result = analyze_depth(routed, tok, task, limit=4, fidelity_tokens=3, batch_size=3)
    task_obj = get_task(task)
    ev = PathEvaluator(routed, tok, task_obj, style="plain", reuse_prefix=False)  # no prefix reuse here
    examples = task_obj.load(result["split"], limit=4)
    prepared = ev.prepare(examples, 0, ev.greedy_continuations(examples, 3))
    base = ev.outcomes([(p, (1, 1, 1, 1)) for p in prepared])
    for i in range(4):
        for kind, value in (("skip", 0), ("repeat", 2)):
            path = tuple(value if j == i else 1 for j in range(4))
            outcomes = ev.outcomes([(p, path) for p in prepared])
            for key in ("reward", "margin", "fidelity"):
                want = np.mean(
                    [getattr(o, key) - getattr(b, key) for o, b in zip(outcomes, base, strict=True)]
                )
                got = result["sensitivity"][kind][f"delta_{key}"][i]["value"]
                assert got == pytest.approx(want, abs=ATOL), (kind, i, key)
    safest = result["sensitivity"]["safest_skips"]["likelihood"]
    margins = [c["value"] for c in result["sensitivity"]["skip"]["delta_margin"]]
    assert safest["most"][0] == int(np.argmax(margins)) and safest["least"][0] == int(np.argmin(margins))


def test_effective_depth_is_robust_to_an_early_dip():
    kl = [9.0, 8.0, 1.0, 6.0, 3.0, 2.0, 0.0]  # half of the max over layer outputs: 4; the dip at 2 comes back
    overlap = [0.0, 0.4, 0.0, 0.2, 0.4, 0.6, 1.0]
    depth = effective_depth(kl, overlap)
    assert depth["kl"] == {"layer": 3, "depth": 4, "ratio": 4 / 6}
    assert depth["top5"] == {"layer": 3, "depth": 4, "ratio": 4 / 6}
    assert effective_depth([100.0] + kl[1:], overlap) == depth  # the embedding does not set the maximum
    along_path = effective_depth(kl, overlap, layers=[0, 1, 1, 2, 3, 3])  # layer 1 repeated, applications
    assert along_path["kl"]["layer"] == 2 and along_path["kl"]["depth"] == 4


def test_spearman_matches_scipy_with_ties_and_gaps():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.integers(0, 4, 12).astype(float), rng.normal(size=12)
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert spearman([1, None, 3, 4, 5], [2, 9, 1, 4, 3]) == pytest.approx(
        stats.spearmanr([1, 3, 4, 5], [2, 1, 4, 3]).statistic
    )
    assert spearman([1, 1, 1, 1], [1, 2, 3, 4]) is None and spearman([1, 2], [2, 1]) is None


def test_paths_overlay_reads_search_records(tmp_path):
    routed, tok = RoutedModel(tiny_model("llama")), tiny_tokenizer()
    paths = tmp_path / "paths.jsonl"
    rows = [SearchRecord("a", "red cat?", [1, 0, 1, 1]), SearchRecord("b", "blue moon tree", [1, 1, 2, 1])]
    paths.write_text("".join(r.to_json() + "\n" for r in rows))
    task = choice_file(tmp_path / "mc.jsonl", n=3)
    result = analyze_depth(routed, tok, task, limit=3, paths=str(paths), fidelity_tokens=0, batch_size=2)
    overlay = result["overlays"]["paths"]
    assert overlay["prompts"] == 2 and overlay["mean_layers"] == 4.0
    assert overlay["skip_share"] == [0, 0.5, 0, 0] and overlay["repeat_share"] == [0, 0, 0.5, 0]
    assert overlay["effective_depth"]["base"]["kl"]["depth"]["value"] <= 4
    with pytest.raises(FileNotFoundError, match="does not exist"):
        analyze_depth(routed, tok, task, limit=3, paths=str(tmp_path / "none.jsonl"))
    with pytest.raises(ValueError, match="decisions has 3 columns, the model has 4 layers"):
        analyze_depth(routed, tok, task, limit=3, decisions="1,0,1")
    with pytest.raises(ValueError, match="without its tokenizer"):
        run_analysis(routed, task, str(tmp_path / "x"))
    other = SearchRecord("c", "red cat?", [1, 1, 1, 1], settings={"fingerprint": "mistral-L4-d32-other"})
    paths.write_text(other.to_json() + "\n")
    with pytest.raises(ValueError, match="example 'c' was searched with model '' of fingerprint mistral-L4"):
        analyze_depth(routed, tok, task, limit=3, paths=str(paths))
    elsewhere = SearchRecord("d", "red cat?", [1, 1, 1, 1], task="arc_easy")
    paths.write_text(elsewhere.to_json() + "\n")
    with pytest.raises(ValueError, match=f"searched on task 'arc_easy', not '{task}'"):
        analyze_depth(routed, tok, task, limit=3, paths=str(paths))
    relative = SearchRecord("e", "red cat?", [1, 1, 1, 1], task=f"jsonl:{tmp_path}/./mc.jsonl")
    paths.write_text(relative.to_json() + "\n")  # another spelling of the analysed file: the same task
    assert analyze_depth(routed, tok, task, limit=3, paths=str(paths), fidelity_tokens=0)["overlays"]


def test_run_analysis_writes_json_figures_and_report(tmp_path):
    routed, tok = RoutedModel(tiny_model("llama")), tiny_tokenizer()
    task = choice_file(tmp_path / "mc.jsonl", n=4)
    out = tmp_path / "analysis"
    result = run_analysis(
        routed, task, str(out), limit=4, decisions="1,0,2,1", fidelity_tokens=2, tokenizer=tok
    )
    saved = json.loads(
        (out / "analysis.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON")
    )
    assert saved["logit_lens"]["kl_final_to_lens"] == pytest.approx(result["logit_lens"]["kl_final_to_lens"])
    assert saved["angular_distance"]["d"][4][1] is None  # l + n > L: undefined, written as null
    for name in ("residual", "angular", "logit_lens", "sensitivity", "overlay"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    safest = result["sensitivity"]["safest_skips"]["likelihood"]
    assert f"safest layers to skip are {', '.join(map(str, safest['most']))}" in report
    assert "effective depth" in report.lower() and "fixed path 1,0,2,1" in report


def test_analyze_command(tiny_model_dir, mc_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["analyze", "--help"])
    assert err.value.code == 0
    text = capsys.readouterr().out
    assert "drllm analyze" in text and all(
        f in text.replace("_", "-") for f in ("--routers", "--fidelity-tokens")
    )
    out = tmp_path / "analysis"
    args = ["analyze", "--model", tiny_model_dir, "--task", f"jsonl:{mc_file}", "--output", str(out)]
    main(args + ["--limit", "3", "--fidelity-tokens", "2", "--decisions", "1,0,2,1", "--batch-size", "2"])
    saved = json.loads((out / "analysis.json").read_text())
    assert saved["prompts"] == 3 and saved["overlays"]["decisions"]["mean_layers"] == 4.0
    assert (out / "report.md").is_file() and (out / "sensitivity.png").is_file()
    with pytest.raises(SystemExit) as err:
        main(args + ["--decisions", "1,1"])
    assert err.value.code == 2
    assert "drllm: error: decisions has 2 columns, the model has 4 layers" in capsys.readouterr().err


def test_fidelity_tokens_past_the_context_are_refused_before_any_forward(tmp_path, monkeypatch):
    routed, tok = RoutedModel(tiny_model("gpt2")), tiny_tokenizer()  # context 128

    def never(*a, **k):
        raise AssertionError("ran a forward")

    monkeypatch.setattr("drllm.evaluation.analysis.depth_pass", never)
    task = choice_file(tmp_path / "mc.jsonl", n=3)
    with pytest.raises(ValueError, match=r"fidelity-tokens.*context of 128"):
        analyze_depth(routed, tok, task, limit=3, fidelity_tokens=200, batch_size=2)
