"""The exported artefact's verdict: signal only when what is exported beats its static path, and the
routers beat random routing at their rates."""

from types import SimpleNamespace

import pytest

from drllm.evaluation.export import verdict

PATH = [1] * 27 + [0] * 3


def _method(name, correct, layers=27, path=None, threshold=None):
    outcomes = [SimpleNamespace(reward=float(c)) for c in correct]
    return SimpleNamespace(
        name=name,
        level=27,
        seed=None,
        outcomes=outcomes,
        layers=[layers] * len(correct),
        path=path,
        threshold=threshold,
    )


@pytest.mark.parametrize(
    ("deviating", "static", "routed", "random", "signal"),
    [
        ([1] * 40, [0] * 40, [1] * 40, [0] * 40, True),  # beats its static path, and the routers beat random
        ([1] * 40, [0] * 40, [1] * 40, [1] * 40, False),  # random routing at the same rates does as well
        ([0] * 40, [0] * 40, [1] * 40, [0] * 40, False),  # what is exported is no better than its path
        ([1] * 3 + [0] * 37, [0] * 40, [1] * 40, [0] * 40, False),  # better, but not significantly (3 of 40)
    ],
)
def test_signal_needs_the_export_to_beat_its_path_and_the_routers_their_control(
    deviating, static, routed, random, signal
):
    methods = [
        _method("routed", routed, layers=26),
        _method("routed-random", random),
        _method("routed-static", deviating, path=PATH, threshold=0.5),
        _method("block-influence", [1] * 40, path=[0] + [1] * 27 + [0, 1]),  # better, but not the path used
        _method("angular", static, path=PATH),
    ]
    found, text = verdict("arc_easy", 27, methods)
    assert found is signal
    assert text.startswith(
        "drllm eval, arc_easy, 40 examples, 27 layers: the routers deviating from the static path angular "
        f"(threshold 0.5) score {100 * sum(deviating) / 40:.1f}% at 27.00 layers"
    )
    assert f"the routers alone {100 * sum(routed) / 40:.1f}% at 26.00 layers" in text
    assert (
        "no per-input signal shown: these routers run the static path angular (27 layers)" in text
    ) is not signal
