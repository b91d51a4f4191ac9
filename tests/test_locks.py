"""Two writers of one output are refused, however the output is named (a symlink is the same file)."""

import pytest
from task_files import choice_file
from tiny_models import tiny_model, tiny_tokenizer

from drllm.evaluation.evaluate import run_eval
from drllm.router import RoutedModel
from drllm.search.records import OutputLockedError, SearchOutput, folder_lock


def test_a_search_through_a_symlink_shares_the_files_lock(tmp_path):
    real = tmp_path / "paths.jsonl"
    link = tmp_path / "alias.jsonl"
    link.symlink_to(real)
    with SearchOutput(real):
        with pytest.raises(OutputLockedError, match="another search"):
            SearchOutput(link)
    with SearchOutput(link):  # released: the other name works again
        pass


def test_a_second_evaluation_into_one_folder_is_refused(tmp_path):
    task = choice_file(tmp_path / "mc.jsonl", n=4)
    out = tmp_path / "eval"
    alias = tmp_path / "alias"
    alias.symlink_to(out, target_is_directory=True)
    with folder_lock(out, "eval.lock", "evaluation"):
        with pytest.raises(OutputLockedError, match="another evaluation"):
            run_eval(
                RoutedModel(tiny_model("llama")),
                task,
                str(alias),
                tokenizer=tiny_tokenizer(),
                batch_size=2,
                calibration=2,
                target_layers=(3,),
                baselines=("drop-last",),
                fidelity_tokens=2,
            )
    assert not (out / "results.json").exists()
