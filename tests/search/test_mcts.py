"""Tests of the torch-free MCTS over decision vectors."""

import hashlib
import math
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drllm.search.mcts import (
    PathSearch,
    SearchConfig,
    child_paths,
    path_cost,
    preference_key,
    run_lockstep,
    tree_seed,
)


def hash_reward(path, salt="", rate=0.1):
    """Deterministic pseudo-random 0/1 reward of a path."""
    digest = hashlib.sha256(f"{salt}{path}".encode()).digest()
    return 1.0 if digest[0] < 256 * rate else 0.0


def drive(search, reward_fn):
    """Run one search alone; return its result and the paths it requested, in order."""
    requests = []
    while (path := search.request()) is not None:
        requests.append(path)
        search.give(reward_fn(path))
    return search.result(), requests


def differs_by_one_action(parent, child, config):
    return child in child_paths(parent, config)


# ---------------------------------------------------------------- actions


def test_child_paths_of_root():
    config = SearchConfig()
    children = child_paths((1, 1, 1), config)
    skip_one = {(0, 1, 1), (1, 0, 1), (1, 1, 0)}
    skip_two = {(0, 0, 1), (1, 0, 0)}
    repeat_one = {(2, 1, 1), (1, 2, 1), (1, 1, 2)}
    expected = skip_one | skip_two | repeat_one
    assert set(children) == expected
    assert len(children) == len(expected)


def test_child_paths_never_touch_skipped_or_repeated_layers():
    path = (0, 1, 2, 1, 1, 0)
    for child in child_paths(path, SearchConfig()):
        assert len(child) == len(path)
        for i in (0, 2, 5):
            assert child[i] == path[i]
        changed = [i for i in range(len(path)) if child[i] != path[i]]
        assert changed in ([1], [3], [4], [3, 4])
        if changed == [3, 4]:
            assert child[3] == child[4] == 0


def test_child_paths_respect_options():
    root = (1, 1, 1, 1)
    no_repeat = child_paths(root, SearchConfig(allow_repeat=False))
    assert all(2 not in child for child in no_repeat)
    single = child_paths(root, SearchConfig(max_skip=1, allow_repeat=False))
    assert all(sum(child) == 3 for child in single) and len(single) == 4
    triple = child_paths(root, SearchConfig(max_skip=3, allow_repeat=False))
    assert (0, 0, 0, 1) in triple and (1, 0, 0, 0) in triple
    floor = child_paths((1, 1, 0, 0), SearchConfig(min_layers=1))
    assert (0, 0, 0, 0) not in floor and (0, 1, 0, 0) in floor
    assert child_paths((1, 0, 0, 0), SearchConfig(min_layers=1, allow_repeat=False)) == []


UNITS = SearchConfig(unit_costs=(0.7, 0.3))  # (MLP alone, attention alone), in layers


def test_sublayer_units_add_mlp_and_attention_alone_and_skipping_the_unit_left():
    children = child_paths((1, 1, 1), UNITS)
    assert set(child_paths((1, 1, 1), SearchConfig())) < set(children)
    assert {c for c in children if set(c) & {3, 4}} == {
        (3, 1, 1), (4, 1, 1), (1, 3, 1), (1, 4, 1), (1, 1, 3), (1, 1, 4)
    }  # fmt: skip
    from_unit = child_paths((3, 1, 4), UNITS)
    assert (0, 1, 4) in from_unit and (3, 1, 0) in from_unit, "a layer running one unit may skip it"
    assert all(c[0] in (0, 3) and c[2] in (0, 4) for c in from_unit), "a unit is never switched to another"
    assert path_cost((3, 1, 4, 0, 2), UNITS) == pytest.approx(0.7 + 1 + 0.3 + 0 + 2)
    assert path_cost((1, 0, 2), UNITS) == path_cost((1, 0, 2)) == 3
    floor = child_paths((3, 0, 0), SearchConfig(unit_costs=(0.7, 0.3), min_layers=0.5))
    assert (0, 0, 0) not in floor, "min_layers counts costs"
    with pytest.raises(ValueError, match="unit_costs"):
        SearchConfig(unit_costs=(1.0, 0.3))


def test_a_sublayer_search_prefers_the_cheapest_correct_path_by_cost():
    """Attention alone costs 0.3 of a layer: correct paths are ranked by that cost, not by sum(d)."""
    assert sorted([(1, 4), (3, 1), (0, 1)], key=lambda p: preference_key(p, UNITS)) == [
        (0, 1),
        (1, 4),
        (3, 1),
    ]
    correct = lambda p: 1.0 if p[1] in (1, 4) and p[2] != 0 else 0.0  # noqa: E731
    config = SearchConfig(simulations=300, early_stop_margin=10, unit_costs=(0.7, 0.3))
    result, requests = drive(PathSearch(4, seed=0, config=config), correct)
    assert any(set(p) & {3, 4} for p in requests)
    assert result.layers == pytest.approx(min(path_cost(p, config) for p in result.correct_paths))
    assert result.decisions == result.correct_paths[0]


# ---------------------------------------------------------------- determinism and lockstep


def test_same_seed_same_search():
    reward = lambda p: hash_reward(p, "x", rate=0.02)  # noqa: E731
    first = drive(PathSearch(12, seed=7), reward)
    second = drive(PathSearch(12, seed=7), reward)
    assert first == second
    other = drive(PathSearch(12, seed=8), reward)
    assert other[1] != first[1]


def test_lockstep_equals_running_alone():
    num_layers, salts = 10, ["a", "b", "c", "d", "e"]
    rewards = [lambda p, s=s: hash_reward(p, s, rate=0.03) for s in salts]
    rewards[0] = lambda p: 1.0 if p[3] == p[4] == 0 else 0.0  # skip layers 3 and 4
    alone = [
        drive(PathSearch(num_layers, seed=tree_seed(0, s)), f) for s, f in zip(salts, rewards, strict=True)
    ]

    seen = [[] for _ in salts]
    calls = []

    def evaluate(paths, indices):
        calls.append(len(paths))
        assert len(set(indices)) == len(indices)
        for path, index in zip(paths, indices, strict=True):
            seen[index].append(path)
        return [rewards[i](p) for p, i in zip(paths, indices, strict=True)]

    searches = [PathSearch(num_layers, seed=tree_seed(0, s)) for s in salts]
    results = run_lockstep(searches, evaluate)
    assert results == [result for result, _ in alone]
    assert seen == [requests for _, requests in alone]
    assert calls[0] == len(salts)
    assert len(calls) == max(len(requests) for _, requests in alone)
    assert all(search.done for search in searches)


def test_lockstep_rejects_wrong_reward_count():
    with pytest.raises(ValueError, match="rewards"):
        run_lockstep([PathSearch(4, seed=0)], lambda paths, indices: [])


# ---------------------------------------------------------------- memoization and widening


def test_no_path_is_requested_twice():
    config = SearchConfig(simulations=300)
    result, requests = drive(PathSearch(4, seed=3, config=config), lambda p: 0.0)
    assert len(requests) == len(set(requests))
    assert result.evaluations == len(requests)
    assert result.simulations == 300  # memoized simulations still count
    assert result.evaluations < result.simulations + 1


def test_progressive_widening_descends():
    # one position changes per action, so depth = Hamming distance from the root
    config = SearchConfig(max_skip=1)
    _, requests = drive(PathSearch(16, seed=0, config=config), lambda p: 0.0)
    depth = max(sum(d != 1 for d in path) for path in requests)
    assert depth >= 3


# ---------------------------------------------------------------- early stopping and final choice


def test_stops_when_default_wrong_and_correct_found():
    reward = lambda p: 1.0 if p[5] == 0 else 0.0  # noqa: E731
    result, requests = drive(PathSearch(8, seed=1), reward)
    assert result.base_reward == 0.0
    assert reward(requests[-1]) == 1.0
    assert sum(reward(p) for p in requests) == 1
    assert result.simulations < 50
    assert result.decisions == requests[-1] and result.reward == 1.0
    assert result.correct_paths == [requests[-1]]


def test_stops_when_correct_path_two_layers_shorter():
    reward = lambda p: 1.0 if sum(p) <= 6 or p == (1,) * 8 else 0.0  # noqa: E731
    result, requests = drive(PathSearch(8, seed=2), reward)
    assert result.base_reward == 1.0
    assert sum(requests[-1]) <= 6 and result.simulations < 50
    assert result.layers <= 6
    assert (1,) * 8 in result.correct_paths


def test_no_early_stop_for_one_layer_shorter():
    reward = lambda p: 1.0 if sum(p) >= 7 else 0.0  # noqa: E731
    result, _ = drive(PathSearch(8, seed=2), reward)
    assert result.simulations == 50
    assert result.layers == 7
    assert all(sum(p) >= 7 for p in result.correct_paths)


def test_root_chosen_when_nothing_correct():
    result, requests = drive(PathSearch(6, seed=0), lambda p: 0.0)
    assert requests[0] == (1,) * 6
    assert result.decisions == (1,) * 6 and result.layers == 6
    assert result.correct_paths == [] and result.reward == 0.0


def test_final_choice_tie_breaking():
    paths = [(1, 1, 1, 1), (1, 0, 2, 0), (1, 1, 0, 1), (0, 1, 1, 1), (1, 0, 1, 1), (2, 2, 0, 0)]
    ranked = sorted(paths, key=preference_key)
    assert ranked == [(0, 1, 1, 1), (1, 0, 1, 1), (1, 1, 0, 1), (1, 0, 2, 0), (1, 1, 1, 1), (2, 2, 0, 0)]


def test_result_prefers_shortest_correct_path():
    # the root and every path skipping layer 2 are correct; a large margin keeps the search going
    reward = lambda p: 1.0 if p[2] == 0 else 0.0  # noqa: E731
    config = SearchConfig(simulations=200, early_stop_margin=10)
    search = PathSearch(6, seed=0, config=config)
    result, _ = drive(search, lambda p: 1.0 if p == (1,) * 6 or reward(p) else 0.0)
    assert result.correct_paths == sorted(result.correct_paths, key=preference_key)
    assert result.decisions == result.correct_paths[0]
    assert result.layers == min(sum(p) for p in result.correct_paths)


# ---------------------------------------------------------------- API details


def test_request_is_idempotent_and_give_needs_request():
    search = PathSearch(3, seed=0)
    with pytest.raises(RuntimeError):
        search.give(1.0)
    with pytest.raises(RuntimeError):
        search.result()
    assert search.request() == search.request() == (1, 1, 1)
    with pytest.raises(ValueError, match="reward"):
        search.give(1.5)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="num_layers"):
        PathSearch(0, seed=0)
    with pytest.raises(ValueError, match="min_layers"):
        PathSearch(2, seed=0, config=SearchConfig(min_layers=3))
    with pytest.raises(ValueError, match="random_prob"):
        SearchConfig(random_prob=1.5)


def test_zero_simulations_scores_only_the_root():
    result, requests = drive(PathSearch(5, seed=0, config=SearchConfig(simulations=0)), lambda p: 1.0)
    assert requests == [(1,) * 5] and result.simulations == 0 and result.evaluations == 1


def test_tree_seed_is_stable_across_processes():
    here = tree_seed(1234, "arc-easy/17")
    code = "from drllm.search.mcts import tree_seed; print(tree_seed(1234, 'arc-easy/17'))"
    env = {**os.environ, "PYTHONHASHSEED": "99"}
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert int(there.stdout) == here
    assert tree_seed(1234, "arc-easy/18") != here and tree_seed(1235, "arc-easy/17") != here
    assert 0 <= here < 2**64


# ---------------------------------------------------------------- property


@settings(max_examples=60, deadline=None)
@given(
    num_layers=st.integers(1, 9),
    seed=st.integers(0, 2**32),
    max_skip=st.integers(0, 3),
    allow_repeat=st.booleans(),
    min_frac=st.floats(0.0, 1.0),
    rate=st.sampled_from([0.0, 0.05, 0.5]),
)
def test_requested_paths_are_valid(num_layers, seed, max_skip, allow_repeat, min_frac, rate):
    min_layers = math.floor(min_frac * num_layers)
    config = SearchConfig(max_skip=max_skip, allow_repeat=allow_repeat, min_layers=min_layers)
    result, requests = drive(PathSearch(num_layers, seed, config), lambda p: hash_reward(p, seed, rate))
    assert requests[0] == (1,) * num_layers
    assert len(requests) == len(set(requests))
    for n, path in enumerate(requests):
        assert len(path) == num_layers and set(path) <= {0, 1, 2}
        assert sum(path) >= min_layers
        if n:
            assert any(differs_by_one_action(prev, path, config) for prev in requests[:n])
        if max_skip == 0:
            assert 0 not in path
        if not allow_repeat:
            assert 2 not in path
    assert result.decisions in requests
    assert result.simulations <= config.simulations


def test_priming_changes_nothing_but_the_requests():
    """A tree primed with some rewards runs exactly as one that asked for them, asking fewer times."""

    def reward(path):
        return 1.0 if path[2] == 0 and path[5] == 2 else 0.0

    config = SearchConfig(simulations=40)
    plain = PathSearch(8, seed=3, config=config)
    asked_plain = 0
    while (path := plain.request()) is not None:
        asked_plain += 1
        plain.give(reward(path))
    primed = PathSearch(8, seed=3, config=config)
    singles = child_paths((1,) * 8, SearchConfig(max_skip=1))
    primed.prime({p: reward(p) for p in singles})
    asked = []
    while (path := primed.request()) is not None:
        asked.append(path)
        primed.give(reward(path))
    assert primed.result() == plain.result()
    assert not set(asked) & set(singles) and len(asked) < asked_plain
