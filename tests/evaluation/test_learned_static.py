"""``learned-static``: a KL-trained static path as a baseline of ``drllm eval``, with KL and agreement."""

import pytest
from task_files import choice_file

from drllm.evaluation.evaluate import run_eval
from drllm.evaluation.learned import learned_path
from drllm.train.trainer import train_routers


def test_learned_path_keeps_protected_layers_and_ranks_the_rest():
    margins = [-9.0, -9.0, 3.0, -1.0, 2.0, 0.5, -9.0]
    assert learned_path(margins, 3) == (1, 1, 0, 0, 0, 0, 1)
    assert learned_path(margins, 5) == (1, 1, 1, 0, 1, 0, 1)
    with pytest.raises(ValueError, match="level in"):
        learned_path(margins, 2)


def test_eval_scores_learned_static_and_kl_for_every_method(tmp_path, tiny_model_dir):
    task = choice_file(tmp_path / "mc.jsonl", n=8)
    static = tmp_path / "static"
    train_routers(
        tiny_model_dir,
        output=str(static),
        objective="kl",
        tasks=[task],
        target_layers=3,
        router="static",
        epochs=1,
        batch_size=4,
        continuation_tokens=3,
        device="cpu",
    )
    rows = run_eval(
        tiny_model_dir,
        task,
        str(tmp_path / "eval"),
        batch_size=4,
        calibration=4,
        target_layers=(3,),
        baselines=("angular", "block-influence"),
        fidelity_tokens=4,
        learned_static=str(static),
        device="cpu",
    )
    by = {r.method: r for r in rows}
    assert sum(by["learned-static"].path) == 3
    assert by["base"].kl.value == pytest.approx(0.0, abs=1e-5)
    assert by["base"].token_agreement.value == 1.0
    for name in ("learned-static", "angular", "block-influence"):
        assert by[name].kl.value >= 0 and by[name].kl.low <= by[name].kl.value <= by[name].kl.high
    assert by["learned-static"].kl_static in ("angular", "block-influence", None)
    text = (tmp_path / "eval" / "results.md").read_text()
    assert "learned-static" in text and "KL to base" in text
    with pytest.raises(FileNotFoundError, match="router_config.json"):
        run_eval(tiny_model_dir, task, str(tmp_path / "e2"), learned_static=str(tmp_path / "nope"))
