"""Static baselines on tiny random models: decision vectors, calibration statistics, task-aware greedy."""

import math
from types import SimpleNamespace

import pytest
import torch
from task_files import choice_file, exact_file
from tiny_models import prompts, tiny_model, tiny_tokenizer

from drllm.evaluation.baselines import (
    METHODS,
    angular_block,
    angular_distances,
    angular_path,
    block_influence_path,
    calibration_statistics,
    drop_last,
    greedy_paths,
    last_token_hidden,
    layers_to_drop,
    random_skips,
    static_paths,
    summed_margins,
)
from drllm.router import RoutedModel, all_execute, encode_prompt
from drllm.search.evaluator import Outcome, PathEvaluator
from drllm.search.tasks import get_task

TEXTS = ["red cat", "a", "what is the sun?", "dog 12", "blue moon tree, green", "xy"]


def test_static_vectors():
    assert drop_last(6, 2) == [1, 1, 1, 0, 0, 1]
    assert drop_last(4, 0) == [1, 1, 1, 1]
    assert drop_last(4, 2, keep_last=False) == [1, 1, 0, 0]
    for seed in range(5):
        d = random_skips(6, 3, seed)
        assert len(d) == 6 and d[-1] == 1 and d.count(0) == 3 and set(d) <= {0, 1}
        assert d == random_skips(6, 3, seed)
    assert random_skips(4, 4, 0, keep_last=False) == [0, 0, 0, 0]
    assert layers_to_drop(4.4, 6) == 2 and layers_to_drop(7.0, 6) == 0
    with pytest.raises(ValueError, match="cannot skip 6 layers"):
        drop_last(6, 6)


def _identity_layers(model, layers):
    with torch.no_grad():
        for i in layers:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    return model


def test_angular_picks_identity_block():
    routed = RoutedModel.from_pretrained(_identity_layers(tiny_model("llama"), (1, 2)))
    ids, mask = prompts()
    states = last_token_hidden(routed, ids, mask)
    assert states.shape == (3, 5, 32)
    torch.testing.assert_close(states[:, 1], states[:, 3])
    distances = angular_distances(states, 2)
    assert distances.shape == (3,) and float(distances[1]) < 1e-3 < float(distances.max())
    assert angular_block(routed, ids, mask, 2) == [1, 0, 0, 1]
    assert angular_block(routed, ids, mask, 0) == [1, 1, 1, 1]
    stats = calibration_statistics(routed, tiny_tokenizer(), TEXTS, batch_size=4)
    assert angular_path(stats, 2) == (1, 0, 0, 1)
    assert float(stats.block_influence[1]) < 1e-5 and float(stats.block_influence[2]) < 1e-5
    assert block_influence_path(stats, 2) == (1, 0, 0, 1)


def test_identity_final_layer_is_kept_unless_asked():
    routed = RoutedModel.from_pretrained(_identity_layers(tiny_model("llama"), (2, 3)))
    ids, mask = prompts()
    stats = calibration_statistics(routed, tiny_tokenizer(), TEXTS)
    assert angular_path(stats, 2, keep_last=False) == (1, 1, 0, 0)
    assert angular_block(routed, ids, mask, 2, keep_last=False) == [1, 1, 0, 0]
    assert angular_path(stats, 2)[-1] == 1 and angular_block(routed, ids, mask, 2)[-1] == 1
    assert block_influence_path(stats, 2) in {(0, 1, 0, 1), (1, 0, 0, 1)}
    assert block_influence_path(stats, 2, keep_last=False) == (1, 1, 0, 0)


def _naive_statistics(routed, tok, texts):
    """Angular distances and block influence from each prompt run alone (unpadded)."""
    L = routed.num_layers
    angular = torch.full((L + 1, L + 1), float("nan"), dtype=torch.float64)
    angular[0] = 0.0
    per_prompt, token_terms = [], [[] for _ in range(L)]
    for text in texts:
        ids = torch.tensor([encode_prompt(tok, text)])
        with torch.no_grad(), routed.recording() as states:
            routed.backbone(ids, None, all_execute(L))
        h = [s[0].double() for s in states]  # [T, d] each
        per_prompt.append(
            [
                [
                    math.acos(max(-1.0, min(1.0, float(torch.cosine_similarity(h[i][-1], h[j][-1], 0)))))
                    / math.pi
                    for j in range(L + 1)
                ]
                for i in range(L + 1)
            ]
        )
        for i in range(L):
            token_terms[i] += (1 - torch.cosine_similarity(h[i][1:], h[i + 1][1:], dim=-1)).tolist()
    for n in range(1, L + 1):
        for start in range(L + 1 - n):
            angular[n, start] = sum(p[start][start + n] for p in per_prompt) / len(texts)
    influence = torch.tensor([sum(t) / len(t) for t in token_terms], dtype=torch.float64)
    return angular, influence, len(token_terms[0])


def test_calibration_statistics_match_prompts_alone():
    routed = RoutedModel.from_pretrained(tiny_model("llama", seed=2))
    tok = tiny_tokenizer()
    stats = calibration_statistics(routed, tok, TEXTS, batch_size=4)  # two padded batches
    angular, influence, tokens = _naive_statistics(routed, tok, TEXTS)
    assert stats.prompts == len(TEXTS) and stats.tokens == tokens and stats.num_layers == 4
    torch.testing.assert_close(stats.angular.double(), angular, atol=2e-5, rtol=1e-4, equal_nan=True)
    torch.testing.assert_close(stats.block_influence.double(), influence, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="at least one prompt"):
        calibration_statistics(routed, tok, [])


@pytest.fixture(scope="module")
def six_layers():
    return RoutedModel.from_pretrained(tiny_model("llama", seed=4, num_hidden_layers=6))


def _evaluator(routed, tmp_path, kind="choice"):
    spec = choice_file(tmp_path / "mc.jsonl", 6) if kind == "choice" else exact_file(tmp_path / "ex.jsonl", 4)
    task = get_task(spec)
    ev = PathEvaluator(routed, tiny_tokenizer(), task, max_rows=32)
    return ev, ev.prepare(task.load())


def _one_more(path, value, keep_last=True):
    L = len(path)
    end = L - 1 if keep_last else L
    return [path[:i] + (value,) + path[i + 1 :] for i in range(end if value == 0 else L) if path[i] == 1]


def test_every_path_has_its_count_and_keeps_the_final_layer(six_layers, tmp_path):
    L = 6
    ev, prepared = _evaluator(six_layers, tmp_path)
    greedy = greedy_paths(ev, prepared, range(1, L), repeats=True)
    stats = calibration_statistics(six_layers, tiny_tokenizer(), TEXTS)
    paths = static_paths(METHODS, range(1, L + 1), L, stats=stats, greedy=greedy, seeds=(0, 1, 2))
    assert set(paths) == set(METHODS)
    for method, by_level in paths.items():
        assert sorted(by_level) == list(range(1, L + 1))
        for c, found in by_level.items():
            assert len(found) == (3 if method == "random" else 1)
            for path in found:
                assert len(path) == L and sum(path) == c and path[-1] != 0, (method, c, path)
    loose = static_paths(["angular", "drop-last"], [2], L, stats=stats, keep_last=False)
    assert all(sum(p) == 2 for v in loose.values() for p in v[2])
    with pytest.raises(ValueError, match="known baselines"):
        static_paths(["nope"], [3], L)
    with pytest.raises(ValueError, match="need stats"):
        static_paths(["angular"], [3], L)
    with pytest.raises(ValueError, match="greedy has no path with 2 layers"):
        static_paths(["greedy"], [2], L, greedy={3: (1, 1, 0, 0, 0, 1)})


def test_greedy_is_the_best_skip_sequence(six_layers, tmp_path):
    L = 6
    ev, prepared = _evaluator(six_layers, tmp_path)
    lines = []
    result = greedy_paths(ev, prepared, range(1, L), repeats=False, progress=lines.append)
    assert len(lines) == L - 1 and result.rows == len(prepared) * sum(range(1, L))
    full = (1,) * L
    singles = _one_more(full, 0)
    scores = summed_margins(ev, prepared, singles)
    assert result.paths[L - 1] == singles[max(range(len(singles)), key=scores.__getitem__)]
    assert result.scores[L - 1] == pytest.approx(max(scores))
    stats = calibration_statistics(six_layers, tiny_tokenizer(), TEXTS)
    rivals = static_paths(
        ["block-influence", "angular", "drop-last", "random"], [L - 1], L, stats, seeds=range(4)
    )
    for method, found in rivals.items():
        for score in summed_margins(ev, prepared, found[L - 1]):
            assert result.scores[L - 1] >= score - 1e-9, method
    for c in range(1, L - 1):  # each level is the best one-skip extension of the level above
        options = _one_more(result.paths[c + 1], 0)
        scores = summed_margins(ev, prepared, options)
        assert result.paths[c] == options[max(range(len(options)), key=scores.__getitem__)]
        assert result.scores[c] == pytest.approx(max(scores))
        assert result.paths[c] == result.descent[c]


@pytest.mark.parametrize("kind", ["choice", "exact"])
def test_greedy_keeps_a_repeat_only_when_it_scores_higher(six_layers, tmp_path, kind):
    ev, prepared = _evaluator(six_layers, tmp_path, kind)
    plain = greedy_paths(ev, prepared, [5, 4, 3], repeats=False)
    result = greedy_paths(ev, prepared, [5, 4, 3], repeats=True)
    assert {c: result.descent[c] for c in (5, 4, 3)} == {c: plain.paths[c] for c in (5, 4, 3)}
    assert result.rows == len(prepared) * (5 + 4 + 3 + 2 + 4 + 3 + 2)
    for c in (5, 4, 3):
        variants = _one_more(result.descent[c - 1], 2)
        best = max(summed_margins(ev, prepared, variants))
        skip_only = result.descent_scores[c]
        assert result.scores[c] == pytest.approx(max(best, skip_only))
        assert summed_margins(ev, prepared, [result.paths[c]])[0] == pytest.approx(result.scores[c])
        if 2 in result.paths[c]:
            assert result.paths[c] in variants and result.scores[c] > skip_only
        else:
            assert result.paths[c] == result.descent[c] and skip_only >= best


class StubEvaluator:
    """Margins from a formula: minus the skipped indices; skipping layer 0 gives NaN on even examples, layer 1
    None; a repeat adds 1000."""

    def __init__(self, num_layers):
        self.routed = SimpleNamespace(num_layers=num_layers)
        self.rows = 0

    def outcomes(self, rows):
        self.rows += len(rows)
        return [Outcome(0.0, margin=self._margin(p, path)) for p, path in rows]

    @staticmethod
    def _margin(example, path):
        if path[0] == 0 and example % 2 == 0:
            return float("nan")
        if path[1] == 0:
            return None
        return -sum(i for i, d in enumerate(path) if d == 0) + (1000.0 if 2 in path else 0.0)


def test_greedy_cost_and_missing_margins():
    ev, prepared = StubEvaluator(30), list(range(128))
    result = greedy_paths(ev, prepared, range(22, 30), repeats=True)
    skips, repeats = sum(range(21, 30)), sum(range(21, 29))
    assert result.rows == ev.rows == 128 * (skips + repeats) == 53_888
    assert result.descent[29] == tuple(0 if i == 2 else 1 for i in range(30))  # NaN and None lose
    assert result.descent[22][:2] == (1, 1) and result.descent[22][-1] == 1
    for c in range(22, 30):
        assert result.paths[c] == (2,) + result.descent[c - 1][1:] and sum(result.paths[c]) == c
        assert result.scores[c] == pytest.approx(result.descent_scores[c - 1] + 1000 * 128)
    plain = greedy_paths(StubEvaluator(30), prepared, range(22, 30), repeats=False)
    assert plain.rows == 128 * sum(range(22, 30)) and plain.paths == {
        c: result.descent[c] for c in range(22, 30)
    }
    with pytest.raises(ValueError, match="levels must be executed-layer counts in 1..29"):
        greedy_paths(ev, prepared, [30])
