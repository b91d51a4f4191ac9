"""``drllm eval --stand-in linear``: each static path beside itself with linear stand-ins, paired."""

import pytest
from task_files import choice_file

from drllm.cli.stand_ins import fit_stand_ins
from drllm.evaluation.evaluate import run_eval

COMMON = dict(
    batch_size=4,
    calibration=6,
    target_layers=(3,),
    baselines=("block-influence",),
    fidelity_tokens=4,
    device="cpu",
)


def test_static_paths_gain_a_stand_in_twin_and_never_run_the_routers_stand_ins(tmp_path, tiny_model_dir):
    task = choice_file(tmp_path / "mc.jsonl", n=12)
    plain = {r.method: r for r in run_eval(tiny_model_dir, task, str(tmp_path / "a"), **COMMON)}
    rows = {
        r.method: r for r in run_eval(tiny_model_dir, task, str(tmp_path / "b"), stand_in="linear", **COMMON)
    }
    twin, path = rows["block-influence+linear"], rows["block-influence"]
    assert twin.path == path.path and twin.layers == path.layers == 3
    assert path.kl.value == plain["block-influence"].kl.value
    assert twin.kl.value != path.kl.value and twin.kl_static == "block-influence"
    text = (tmp_path / "b" / "results.md").read_text()
    assert text.index("| block-influence |") < text.index("| block-influence+linear |")
    # routers saved with stand-ins: the routers run them, the static paths of the same evaluation do not
    fit_stand_ins(str(tmp_path / "r"), tiny_model_dir, decisions="1,0,1,1", tasks=[task], calibration=12)
    with_routers = run_eval(tiny_model_dir, task, str(tmp_path / "c"), routers=str(tmp_path / "r"), **COMMON)
    by = {(r.method, r.level): r for r in with_routers}
    assert by[("block-influence", 3)].kl.value == plain["block-influence"].kl.value


def test_bad_stand_in_settings_are_refused(tmp_path, tiny_model_dir):
    task = choice_file(tmp_path / "mc.jsonl", n=4)
    with pytest.raises(ValueError, match="stand_in must be 'linear' or none"):
        run_eval(tiny_model_dir, task, str(tmp_path / "a"), stand_in="cubic")
    with pytest.raises(ValueError, match="stand_in_rank must be a whole number >= 1"):
        run_eval(tiny_model_dir, task, str(tmp_path / "a"), stand_in="linear", stand_in_rank=0)
    with pytest.raises(ValueError, match="--stand-in-rank sets the rank of --stand-in linear"):
        run_eval(tiny_model_dir, task, str(tmp_path / "a"), stand_in_rank=4)
    with pytest.raises(ValueError, match="random ones are not paired"):
        run_eval(tiny_model_dir, task, str(tmp_path / "a"), stand_in="linear", baselines=("random",))
    with pytest.raises(ValueError, match="no --routers are given: drop --budgets"):
        run_eval(tiny_model_dir, task, str(tmp_path / "a"), budgets=(1.0,))
    assert not (tmp_path / "a").exists()


def test_evaluating_the_routers_training_examples_is_said_in_every_title(tmp_path, tiny_model_dir):
    import json

    from drllm.router import RoutedModel

    task = choice_file(tmp_path / "mc.jsonl", n=12)
    routed = RoutedModel.from_pretrained(tiny_model_dir)
    routed.add_routers(kind="linear")
    routed.save_pretrained(tmp_path / "r")
    (tmp_path / "r" / "trained_on.json").write_text(json.dumps({"ids": ["q0", "q1", "q2"]}))
    run_eval(tiny_model_dir, task, str(tmp_path / "e"), routers=str(tmp_path / "r"), limit=6, **COMMON)
    assert (
        "3 of the 6 evaluated examples were the routers' training examples"
        in (tmp_path / "e" / "results.md").read_text()
    )


def test_every_row_reports_its_compute_share(tmp_path, tiny_model_dir):
    from drllm.router import RoutedModel, path_macs

    task = choice_file(tmp_path / "mc.jsonl", n=8)
    rows = {
        r.method: r for r in run_eval(tiny_model_dir, task, str(tmp_path / "a"), stand_in="linear", **COMMON)
    }
    assert rows["base"].compute == pytest.approx(1.0)
    config = RoutedModel.from_pretrained(tiny_model_dir).config
    plain = rows["block-influence"]
    assert plain.compute == pytest.approx(path_macs(config, plain.path, 30)["fraction"], abs=0.02)
    assert plain.compute < rows["block-influence+linear"].compute < 1.0  # the maps cost d^2 a token
    assert "| compute % |" in (tmp_path / "a" / "results.md").read_text()
