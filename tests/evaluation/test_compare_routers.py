"""``drllm eval --compare-routers``: several router folders judged on the same examples in one run."""

import pytest
from task_files import choice_file

from drllm.evaluation.evaluate import run_eval
from drllm.router import RoutedModel

COMMON = dict(
    batch_size=4,
    calibration=6,
    target_layers=(3,),
    baselines=("block-influence",),
    fidelity_tokens=3,
    device="cpu",
)


def _save_routers(model_dir, folder, kind, seed, stand_ins=False):
    import torch

    torch.manual_seed(seed)
    routed = RoutedModel.from_pretrained(model_dir)
    routed.add_routers(kind=kind)
    if stand_ins:
        maps = routed.new_stand_ins()
        maps.repeat_scale.fill_(0.5)
        routed.set_stand_ins(maps)
    routed.save_pretrained(folder)
    return str(folder)


def test_each_compared_folder_scores_as_it_would_alone(tmp_path, tiny_model_dir):
    task = choice_file(tmp_path / "mc.jsonl", n=10)
    first = _save_routers(tiny_model_dir, tmp_path / "linear", "linear", 0)
    second = _save_routers(tiny_model_dir, tmp_path / "other", "linear", 1, stand_ins=True)
    both = run_eval(
        tiny_model_dir, task, str(tmp_path / "both"), routers=first, compare_routers=(second,), **COMMON
    )
    alone = {
        folder: {
            (r.method, r.level): r
            for r in run_eval(tiny_model_dir, task, str(tmp_path / name), routers=folder, **COMMON)
        }
        for name, folder in (("a", first), ("b", second))
    }
    by = {(r.method, r.level): r for r in both}
    compared, own = by[("routed:other", 3)], alone[second][("routed", 3)]
    assert compared.budget == own.budget and compared.layers == own.layers
    assert compared.accuracy.value == own.accuracy.value and compared.kl.value == own.kl.value
    assert by[("routed", 3)].kl.value == alone[first][("routed", 3)].kl.value  # the first keeps its own
    assert ("routed-random", 3) in by and ("routed-random:other", 3) not in by  # controls: --routers only
    assert by[("block-influence", 3)].kl.value == alone[first][("block-influence", 3)].kl.value
    assert "| routed:other |" in (tmp_path / "both" / "results.md").read_text()


def test_compared_folders_without_main_routers_and_bad_lists(tmp_path, tiny_model_dir):
    task = choice_file(tmp_path / "mc.jsonl", n=8)
    one = _save_routers(tiny_model_dir, tmp_path / "one", "linear", 0)
    rows = run_eval(tiny_model_dir, task, str(tmp_path / "e"), compare_routers=(one,), **COMMON)
    assert {r.method for r in rows} == {"base", "block-influence", "routed:one"}
    (tmp_path / "x").mkdir()
    twin = _save_routers(tiny_model_dir, tmp_path / "x" / "one", "linear", 1)
    with pytest.raises(ValueError, match="share the name 'one'"):
        run_eval(tiny_model_dir, task, str(tmp_path / "f"), compare_routers=(one, twin), **COMMON)
    with pytest.raises(ValueError, match="is given twice"):
        run_eval(tiny_model_dir, task, str(tmp_path / "f"), routers=one, compare_routers=(one,), **COMMON)
    with pytest.raises(FileNotFoundError, match="not a folder of saved routers"):
        run_eval(
            tiny_model_dir, task, str(tmp_path / "f"), compare_routers=(str(tmp_path / "none"),), **COMMON
        )
    assert not (tmp_path / "f").exists()
