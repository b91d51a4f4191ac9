"""A search appends only to a file searched with the same settings; restart sets the old file aside."""

import json

import pytest
from task_files import choice_file
from tiny_models import tiny_model, tiny_tokenizer

from drllm.router import RoutedModel
from drllm.search.records import SettingsMismatchError, read_records
from drllm.search.runner import run_search

FAST = {"limit": 2, "batch_size": 2, "sweep": False}


def _search(routed, task, out, **changes):
    args = {"simulations": 2, "seed": 0, "tokenizer": tiny_tokenizer(), **FAST, **changes}
    return run_search(routed, task, str(out), **args)


@pytest.fixture
def searched(tmp_path):
    """A finished 2-example search: (model, task, output file, its bytes)."""
    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    task = choice_file(tmp_path / "mc.jsonl", n=4)
    out = tmp_path / "paths.jsonl"
    _search(routed, task, out)
    return routed, task, out, out.read_bytes()


def test_every_record_names_the_settings_it_was_searched_with(searched):
    routed, task, out, _ = searched
    for record in read_records(out):
        assert (record.task, record.scoring, record.style) == (task, "mc-loglik", "plain")
        assert record.settings["split"] == "all" and record.settings["simulations"] == 2
        assert record.settings["seed"] == 0
        assert record.settings["fingerprint"] == routed.fingerprint == "llama-L4-d32-v96"
        assert record.settings["weight_probe"] == pytest.approx(routed.weight_probe)


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"simulations": 3}, "simulations: file 2, now 3"),
        ({"seed": 1}, "seed: file 0, now 1"),
        ({"scoring": "mc-letter"}, "scoring: file 'mc-loglik', now 'mc-letter'"),
        ({"style": "chat", "tokenizer": tiny_tokenizer(chat=True)}, "style: file 'plain', now 'chat'"),
    ],
)
def test_resuming_with_other_settings_is_refused_naming_both_values(searched, changes, named):
    routed, task, out, before = searched
    with pytest.raises(SettingsMismatchError, match=named) as err:
        _search(routed, task, out, **changes)
    assert "restart" in str(err.value) and "\n" not in str(err.value)
    assert out.read_bytes() == before, "nothing was appended"
    assert not list(out.parent.glob("*.lock")), "a refusal leaves no lock file behind"


def test_another_model_or_task_is_refused(searched, tmp_path):
    routed, task, out, before = searched
    other_weights = RoutedModel.from_pretrained(tiny_model("llama", seed=1))
    with pytest.raises(SettingsMismatchError, match=r"weight_probe: file \[.*\], now \["):
        _search(other_weights, task, out)
    other_shape = RoutedModel.from_pretrained(tiny_model("qwen2"))
    with pytest.raises(SettingsMismatchError, match="fingerprint: file 'llama-L4-d32-v96', now 'qwen2-L4"):
        _search(other_shape, task, out)
    other_task = choice_file(tmp_path / "other.jsonl", n=4)
    with pytest.raises(SettingsMismatchError, match=f"task: file '{task}', now '{other_task}'"):
        _search(routed, other_task, out)
    with pytest.raises(ValueError, match="no split 'validation'"):  # a jsonl file is one split, 'all'
        _search(routed, task, out, split="validation")
    assert out.read_bytes() == before


def test_restart_sets_the_old_file_aside_and_searches_again(searched):
    routed, task, out, before = searched
    summary = _search(routed, task, out, simulations=3, restart=True)
    (old,) = out.parent.glob("paths.jsonl.old-*")
    assert old.read_bytes() == before, "the old file is kept, byte for byte"
    assert summary["examples"] == 2
    assert {r.settings["simulations"] for r in read_records(out)} == {3}


def test_the_same_settings_resume_and_old_files_still_load(searched):
    routed, task, out, before = searched
    _search(routed, task, out, limit=3)  # one more example, same settings: appended
    assert out.read_bytes().startswith(before) and len(read_records(out)) == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for row in rows:
        del row["settings"]  # as an older version wrote them
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _search(routed, task, out, limit=4)  # the values older rows carry agree: resumed
    assert len(read_records(out)) == 4
    with pytest.raises(SettingsMismatchError, match="scoring"):  # and those they carry are compared
        _search(routed, task, out, limit=4, scoring="mc-letter")


def test_a_generate_search_refuses_to_resume_with_another_max_new_tokens(tmp_path):
    """Rewards decoded with another length would mix in one file."""
    from task_files import exact_file

    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    task = exact_file(tmp_path / "ex.jsonl", n=4)
    out = tmp_path / "paths.jsonl"
    _search(routed, task, out, scoring="generate", max_new_tokens=3)
    before = out.read_bytes()
    with pytest.raises(SettingsMismatchError, match="max_new_tokens"):
        _search(routed, task, out, scoring="generate", max_new_tokens=5, limit=3)
    assert out.read_bytes() == before


def test_another_dtype_is_refused_and_another_spelling_of_the_task_file_resumes(searched, tmp_path):
    """Rewards computed in bfloat16 would mix with float32 ones; ``jsonl:dir/./mc.jsonl`` is the same file."""
    routed, task, out, before = searched
    assert {r.settings["dtype"] for r in read_records(out)} == {"float32"}
    respelled = f"jsonl:{tmp_path}/./{task.rsplit('/', 1)[1]}"
    summary = _search(routed, respelled, out, limit=3)
    assert summary["examples"] == 3 and out.read_bytes().startswith(before)
    grown = out.read_bytes()
    with pytest.raises(SettingsMismatchError, match="dtype: file 'float32', now 'bfloat16'"):
        _search(routed, task, out, limit=4, dtype="bfloat16")
    assert out.read_bytes() == grown


def test_restart_through_a_symlink_sets_the_file_it_names_aside_and_keeps_the_link(searched, tmp_path):
    routed, task, out, before = searched
    link = tmp_path / "link.jsonl"
    link.symlink_to(out)
    _search(routed, task, link, simulations=3, restart=True)
    assert link.is_symlink() and link.resolve() == out.resolve(), "the link still names the file"
    (old,) = tmp_path.glob("paths.jsonl.old-*")
    assert old.read_bytes() == before and not old.is_symlink()
    assert {r.settings["simulations"] for r in read_records(out)} == {3}


def test_a_sublayer_search_records_unit_paths_at_their_cost_and_training_refuses_them(tmp_path):
    from drllm.router.compute import unit_shares
    from drllm.search.mcts import SearchConfig, path_cost
    from drllm.search.records import check_block_paths

    routed = RoutedModel.from_pretrained(tiny_model("llama"))
    task = choice_file(tmp_path / "mc.jsonl", n=6)
    out = tmp_path / "units.jsonl"
    summary = _search(routed, task, out, units="sublayer", simulations=30, limit=6, batch_size=3)
    records = read_records(out)
    assert summary["examples"] == 6 and {r.settings["units"] for r in records} == {"sublayer"}
    config = SearchConfig(unit_costs=unit_shares(routed.model.config))
    evaluated = [e["path"] for r in records for e in r.supervision["evaluated"]]
    assert any(set(p) & {"3", "4"} for p in evaluated), "the tree tried units"
    for r in records:
        assert r.layers == pytest.approx(path_cost(tuple(r.decisions), config))
    with pytest.raises(SettingsMismatchError, match="units: file 'sublayer', now 'block'"):
        _search(routed, task, out, limit=6)
    from drllm.search.records import SearchRecord

    unit_row = SearchRecord("u", "a prompt", [1, 1, 1, 1], correct_paths=[[1, 4, 1, 1]])
    with pytest.raises(ValueError, match=r"example 'u' holds sublayer decisions \[4\] .* routers choose"):
        check_block_paths([unit_row], out)
    check_block_paths([SearchRecord("b", "a prompt", [1, 0, 2, 1])], out)  # block paths pass
    with pytest.raises(ValueError, match="units must be one of block, sublayer, got 'attention'"):
        _search(routed, task, tmp_path / "x.jsonl", units="attention")
