"""Progress is logging: silent from Python by default, lines and bars when the drllm logger shows INFO."""

import logging

from tiny_models import tiny_model, tiny_tokenizer

from drllm.router import RoutedModel
from drllm.search import progress
from drllm.search.runner import run_search


def test_search_is_quiet_by_default_and_reports_through_logging(mc_file, tmp_path, caplog, capsys):
    routed = RoutedModel(tiny_model("llama"))
    args = dict(tokenizer=tiny_tokenizer(), simulations=2, limit=2)
    assert not progress.showing() and progress.bar(3).disable
    run_search(routed, f"jsonl:{mc_file}", str(tmp_path / "a.jsonl"), **args)
    assert capsys.readouterr().out == "" and not caplog.records
    with caplog.at_level(logging.INFO, logger="drllm"):
        assert progress.showing() and not progress.bar(3).disable
        run_search(routed, f"jsonl:{mc_file}", str(tmp_path / "b.jsonl"), **args)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "prompt style" in text and "searched 2 examples" in text
