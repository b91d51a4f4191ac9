"""The lm-evaluation-harness adapter on a local task file and a tiny model (hub data is offline here)."""

import json

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

lm_eval = pytest.importorskip("lm_eval")

from drllm.router import RoutedModel  # noqa: E402

WORDS = ["green", "pink", "gold", "cyan", "teal", "rose"]


@pytest.fixture
def task_dir(tmp_path):
    rows = [
        {"question": f"which is {w}?", "choices": ["red", "blue", w], "label": k % 3, "answer": w}
        for k, w in enumerate(WORDS)
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (tmp_path / "tiny_mc.yaml").write_text(
        "task: tiny_mc\n" + common + "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_target: label\ndoc_to_choice: choices\n'
        "metric_list:\n  - metric: acc\n"
    )
    (tmp_path / "tiny_gen.yaml").write_text(
        "task: tiny_gen\n" + common + "output_type: generate_until\n"
        'doc_to_text: "Say {{answer}}:"\ndoc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 4\nmetric_list:\n  - metric: exact_match\n'
    )
    return tmp_path, rows


def test_harness_loglikelihood_and_generation_run_routed(task_dir):
    from lm_eval.tasks import TaskManager

    from drllm.evaluation.lm_eval import DrLLMEval

    folder, rows = task_dir
    routed = RoutedModel(tiny_model("llama"))
    tok = tiny_tokenizer()
    path = [1, 0, 2, 1]
    lm = DrLLMEval(routed, tokenizer=tok, decisions="1,0,2,1", batch_size=1)
    out = lm_eval.simple_evaluate(
        model=lm, tasks=["tiny_mc", "tiny_gen"], task_manager=TaskManager(include_path=str(folder))
    )
    assert lm.layer_counts and set(lm.layer_counts) == {sum(path)}
    # the same accuracy computed directly through RoutedModel under the same path
    correct = 0
    for row in rows:
        context = tok(f"Question: {row['question']}\nAnswer:")["input_ids"]
        scores = []
        for choice in row["choices"]:
            cont = tok(f" {choice}")["input_ids"]
            with torch.no_grad():
                logp = routed(torch.tensor([context + cont]), decisions=path).logits.log_softmax(-1)[0]
            scores.append(sum(float(logp[len(context) - 1 + t, c]) for t, c in enumerate(cont)))
        correct += int(max(range(3), key=scores.__getitem__) == row["label"])
    assert out["results"]["tiny_mc"]["acc,none"] == pytest.approx(correct / len(rows))
    assert "exact_match,none" in out["results"]["tiny_gen"]


@pytest.mark.parametrize("budget", ["nan", "inf", "-inf", float("nan")])
def test_harness_refuses_a_non_finite_budget(budget):
    from drllm.evaluation.lm_eval import DrLLMEval

    routed = RoutedModel(tiny_model("llama"))
    with pytest.raises(ValueError, match=f"budget must be a finite number, got {budget!r}"):
        DrLLMEval(routed, tokenizer=tiny_tokenizer(), budget=budget, batch_size=1)
    lm = DrLLMEval(routed, tokenizer=tiny_tokenizer(), budget="0.5", batch_size=1)  # model_args are strings
    assert lm.routed.budget == 0.5


def test_routers_decide_the_same_at_every_batch_size():
    """The harness right-pads with 0 and gives no mask: routers must not pool the padding."""
    from drllm.evaluation.lm_eval import DrLLMEval

    routed = RoutedModel(tiny_model("llama"))
    routers = routed.add_routers(kind="linear", seed=5)
    with torch.no_grad():
        for head in routers.layers:
            head.proj.weight.mul_(400.0)  # decisions that depend on the pooled prompt
    lm = DrLLMEval(routed, tokenizer=tiny_tokenizer(), batch_size=4)
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 60, (n,), generator=g) for n in (9, 4, 6)]
    batch = torch.zeros(3, 9, dtype=torch.long)
    for r, row in enumerate(rows):
        batch[r, : len(row)] = row
    logits = lm._model_call(batch)
    together = routed.last_decisions.tolist()
    alone = []
    for r, row in enumerate(rows):
        one = lm._model_call(row[None])
        alone += routed.last_decisions.tolist()
        torch.testing.assert_close(logits[r, : len(row)], one[0], atol=1e-5, rtol=0)
    assert together == alone
    assert len({tuple(d) for d in alone}) > 1  # the rows do route differently: the test can tell
