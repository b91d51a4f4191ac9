"""The exported artefact's verdict: signal only when the routers beat the static path and random routing."""

from types import SimpleNamespace

import pytest

from drllm.evaluation.export import verdict


def _method(name, correct, layers=27, path=None, level=27):
    outcomes = [SimpleNamespace(reward=float(c)) for c in correct]
    return SimpleNamespace(
        name=name, level=level, seed=None, outcomes=outcomes, layers=[layers] * len(correct), path=path
    )


@pytest.mark.parametrize(
    ("routed", "static", "random", "signal"),
    [
        ([1] * 40, [0] * 40, [0] * 40, True),  # beats both, significantly
        ([1] * 40, [0] * 40, [1] * 40, False),  # random routing at the same rates does as well
        ([1] * 40, [1] * 40, [0] * 40, False),  # no better than the static path
        ([1] * 3 + [0] * 37, [0] * 40, [0] * 40, False),  # better, but not significantly (3 of 40)
    ],
)
def test_signal_needs_the_routers_to_beat_the_static_path_and_their_random_control(
    routed, static, random, signal
):
    best = _method("angular", static, path=[1] * 27 + [0] * 3)
    methods = [_method("routed", routed), _method("routed-random", random), best]
    found, text = verdict("arc_easy", 27, methods, best)
    assert found is signal
    assert text.startswith(
        f"drllm eval, arc_easy, 40 examples, 27 layers: routers {100 * sum(routed) / 40:.1f}%"
    )
    assert "the static path angular" in text and "random routing at the routers' rates" in text
    assert ("no per-input signal shown" in text) is not signal
