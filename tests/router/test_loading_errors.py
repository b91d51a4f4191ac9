"""A model that cannot be found is one line naming it, never a hub traceback."""

import pytest

from drllm.cli.__main__ import main
from drllm.router import load_model, load_tokenizer


@pytest.mark.parametrize("name", ["/nonexistent/model", "./missing-folder", "a/b/c"])
def test_a_missing_model_folder_is_named(name):
    for load in (load_model, load_tokenizer):
        with pytest.raises(FileNotFoundError, match=f"model folder {name} does not exist"):
            load(name)


def test_an_unreachable_hub_id_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as err:
        main(["generate", "--model", "some-org/not-a-model", "--prompt", "hi"])
    text = capsys.readouterr().err.strip().splitlines()
    assert err.value.code in (1, 2)  # a missing model reads as either, by how transformers reports it
    assert text[-1].startswith("drllm: error: cannot load model 'some-org/not-a-model'")
