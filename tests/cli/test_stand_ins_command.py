"""``drllm stand-ins``: a path or routers in, a router folder that runs the fitted stand-ins out."""

import json

import pytest
import torch
from task_files import choice_file

from drllm.cli import __main__ as cli
from drllm.router import load_routed
from drllm.router.stand_ins import STAND_INS_NAME


def test_a_static_path_is_saved_as_a_router_folder_with_its_stand_ins(tiny_model_dir, tmp_path, capsys):
    task = choice_file(tmp_path / "mc.jsonl", n=40)
    out = tmp_path / "si"
    argv = ["stand-ins", "--model", tiny_model_dir, "--decisions", "1,0,2,1", "--tasks", f"[{task}]"]
    cli.main([*argv, "--output", str(out), "--calibration", "40", "--rank", "4"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["path"] == [1, 0, 2, 1] and summary["mapped_layers"] == [1] and summary["rank"] == 4
    assert (out / STAND_INS_NAME).is_file() and (out / "README.md").is_file()
    routed = load_routed(tiny_model_dir, routers=str(out))
    assert routed.stand_ins.mapped == [1] and routed.stand_ins.info["fitted_on"]["path"] == [1, 0, 2, 1]
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    routed(ids)
    assert routed.last_decisions.tolist() == [[1, 0, 2, 1]]  # the static router holds exactly the path
    cli.main(
        [
            "generate",
            "--model",
            tiny_model_dir,
            "--routers",
            str(out),
            "--prompt",
            "hi",
            "--max-new-tokens",
            "3",
        ]
    )
    assert (
        "path 1021; layer applications: 20; linear stand-ins for skipped layers [1]]"
        in capsys.readouterr().out
    )


def test_input_conditioned_routers_get_a_map_for_every_layer(tiny_model_dir, tmp_path, capsys):
    task = choice_file(tmp_path / "mc.jsonl", n=40)
    routed = load_routed(tiny_model_dir)
    routed.add_routers(kind="linear")
    routed.save_pretrained(tmp_path / "r")
    argv = ["stand-ins", "--model", tiny_model_dir, "--routers", str(tmp_path / "r"), "--tasks", f"[{task}]"]
    cli.main([*argv, "--output", str(tmp_path / "si"), "--calibration", "40"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["path"] is None and summary["mapped_layers"] == [0, 1, 2, 3]
    assert not (tmp_path / "r" / STAND_INS_NAME).exists()  # the routers' own folder is left as it was


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ([], "either --decisions"),
        (["--decisions", "1,1,1,1", "--routers", "x"], "either --decisions"),
        (["--decisions", "1,0,1,1", "--calibration", "0"], "calibration must be a whole number"),
        (["--decisions", ""], "either --decisions"),
        (["--decisions", "1,0,1,1", "--ridge", "1e400"], "ridge must be a finite number"),
        (["--decisions", "1,0,1,1", "--output", ""], "the output path is empty"),
    ],
)
def test_bad_requests_are_refused(tiny_model_dir, tmp_path, capsys, extra, problem):
    with pytest.raises(SystemExit) as err:
        cli.main(["stand-ins", "--model", tiny_model_dir, "--output", str(tmp_path / "o"), *extra])
    assert err.value.code == 2 and problem in capsys.readouterr().err


def test_an_output_that_holds_anything_is_refused_and_kept(tiny_model_dir, tmp_path, capsys):
    """Trained routers (or anything else) in the output folder are never written over."""
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "routers.safetensors").write_bytes(b"precious")
    with pytest.raises(SystemExit) as err:
        cli.main(
            [
                "stand-ins",
                "--model",
                tiny_model_dir,
                "--decisions",
                "1,0,1,1",
                "--output",
                str(tmp_path / "r"),
            ]
        )
    assert err.value.code == 2 and "is not empty" in capsys.readouterr().err
    assert (tmp_path / "r" / "routers.safetensors").read_bytes() == b"precious"


def test_a_second_run_into_one_output_is_refused_and_the_first_kept(tiny_model_dir, tmp_path, capsys):
    from drllm.cli.stand_ins import LOCK, fit_stand_ins
    from drllm.search.output_files import folder_lock

    task = choice_file(tmp_path / "mc.jsonl", n=12)
    out = tmp_path / "si"
    with folder_lock(out, LOCK, "drllm stand-ins"):  # another run is writing there
        with pytest.raises(Exception, match="being written by another drllm stand-ins"):
            fit_stand_ins(str(out), tiny_model_dir, decisions="1,1,0,1", tasks=[task], calibration=8)
    assert not any(p.name != LOCK for p in out.iterdir())
    summary = fit_stand_ins(str(out), tiny_model_dir, decisions="1,0,1,1", tasks=[task], calibration=8)
    assert summary["path"] == [1, 0, 1, 1] and not (out / LOCK).exists()
