"""One loader, one device policy: every command puts the model where it is asked, CUDA when available."""

import subprocess
import sys

import pytest
import torch
from cli_args import search_args, train_args

from drllm.cli.__main__ import main
from drllm.router import RoutedModel, load_routed, resolve_device


@pytest.fixture
def placements(monkeypatch):
    """Record every ``RoutedModel.to`` device without moving anything (this machine may have no GPU)."""
    seen = []

    def spy(self, *args, **kwargs):
        seen.append(torch.device(args[0] if args else kwargs["device"]))
        return self

    monkeypatch.setattr(RoutedModel, "to", spy)
    return seen


def test_default_policy_is_cuda_when_available(tiny_model_dir, placements, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("cuda") == resolve_device("auto")
    load_routed(tiny_model_dir)
    assert placements == [torch.device("cuda")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


def test_a_model_object_stays_where_it_is_unless_told(tiny_model_dir, placements):
    routed = load_routed(tiny_model_dir, device="cpu")
    assert load_routed(routed) is routed and placements == [torch.device("cpu")]
    load_routed(routed, device="cpu")
    assert placements == [torch.device("cpu")] * 2


def test_dtype_by_name(tiny_model_dir):
    assert load_routed(tiny_model_dir, dtype="bfloat16").model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        load_routed(tiny_model_dir, dtype="int8")


@pytest.mark.parametrize("command", ["search", "train", "eval"])
def test_search_train_and_eval_place_the_model_where_asked(
    command, tiny_model_dir, mc_file, tmp_path, placements
):
    paths = tmp_path / "paths.jsonl"
    if command != "search":
        main(search_args(tiny_model_dir, mc_file, paths, "--limit", "6"))
        placements.clear()
    if command == "search":
        argv = search_args(tiny_model_dir, mc_file, paths, "--limit", "2", "--device", "cpu")
    elif command == "train":
        argv = train_args(tiny_model_dir, paths, tmp_path / "routers", "--device", "cpu")
    else:
        argv = [
            "eval",
            "--model",
            tiny_model_dir,
            "--task",
            f"jsonl:{mc_file}",
            "--output",
            str(tmp_path / "e"),
        ]
        argv += ["--limit", "3", "--device", "cpu"]
    main(argv)
    assert placements and placements[0] == torch.device("cpu")


def test_generate_works_without_the_train_extra(tiny_model_dir):
    """``pip install drllm`` (no extras): generation imports neither Lightning nor plotting nor datasets."""
    code = (
        "import sys\n"
        "for name in ('lightning', 'torchmetrics', 'matplotlib', 'datasets', 'wandb', 'lm_eval'):\n"
        "    sys.modules[name] = None  # any import of them now fails\n"
        "from drllm.cli.__main__ import main\n"
        f"main(['generate', '--model', {tiny_model_dir!r}, '--prompt', 'hi', '--decisions', '1,0,2,1',"
        " '--max-new-tokens', '3', '--chat', 'false', '--device', 'cpu'])\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "layers executed per token: 4 of 4" in run.stdout
