"""The batched path evaluator agrees with scoring each row alone through RoutedModel."""

import json
import random
from dataclasses import replace

import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

from drllm.router import RoutedModel, encode_prompt
from drllm.search.evaluator import PathEvaluator
from drllm.search.tasks import get_task

PATHS = [(1, 1, 1, 1), (1, 0, 1, 1), (1, 1, 2, 1), (0, 2, 1, 0), (1, 1, 1, 0), (2, 2, 2, 2)]


@pytest.fixture
def choice_task(tmp_path):
    rows = [
        {"id": f"q{k}", "question": q, "choices": c, "answer": a}
        for k, (q, c, a) in enumerate(
            [
                ("what is red?", ["a color", "a dog", "seven"], 0),
                ("is ice cold?", ["yes", "no"], 1),
                ("pick b", ["aa", "bb", "cc", "dd"], 2),
            ]
        )
    ]
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return get_task(f"jsonl:{path}")


@pytest.fixture
def exact_task(tmp_path):
    rows = [
        {"id": f"e{k}", "prompt": f"say {w}:", "target": f" {w}"} for k, w in enumerate(["ab", "xyz", "q"])
    ]
    path = tmp_path / "ex.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return get_task(f"jsonl:{path}")


def _alone_loglik(routed, tok, prompt, cont, path):
    p = encode_prompt(tok, prompt)
    c = tok(cont, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = routed(ids, decisions=torch.tensor(path)).logits.log_softmax(-1)[0]
    return sum(float(logp[len(p) - 1 + t, c[t]]) for t in range(len(c)))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3_text", "mistral", "phi3"])
def test_choice_rewards_match_rows_alone(arch, choice_task):
    """With each option in turn as gold, the batched reward is 1 exactly for the best option scored alone."""
    routed = RoutedModel(tiny_model(arch))
    tok = tiny_tokenizer()
    ev = PathEvaluator(routed, tok, choice_task, max_rows=4)
    variants = [replace(p, gold=k) for p in ev.prepare(choice_task.load()) for k in range(len(p.targets))]
    rows = [(p, path) for p in variants for path in PATHS]
    random.Random(0).shuffle(rows)
    alone = {}
    for (p, path), reward in zip(rows, ev.rewards(rows), strict=True):
        if (p.index, path) not in alone:
            conts = choice_task.continuations(p.example, "mc-loglik")
            alone[p.index, path] = [_alone_loglik(routed, tok, p.prompt, c, path) for c in conts]
        scores = alone[p.index, path]
        others = [s for k, s in enumerate(scores) if k != p.gold]
        assert min(abs(scores[p.gold] - s) for s in others) > 1e-4  # no near tie: the ranking is decisive
        assert reward == float(scores[p.gold] > max(others))


def test_prefix_reuse_changes_nothing(choice_task):
    routed = RoutedModel(tiny_model("qwen3"))
    tok = tiny_tokenizer()
    rows_of = lambda ev: [(p, path) for p in ev.prepare(choice_task.load()) for path in PATHS]  # noqa: E731
    with_reuse = PathEvaluator(routed, tok, choice_task, max_rows=5)
    without = PathEvaluator(routed, tok, choice_task, max_rows=5, reuse_prefix=False)
    assert with_reuse.rewards(rows_of(with_reuse)) == without.rewards(rows_of(without))


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_teacher_forced_reward_equals_greedy_generation(arch, exact_task):
    tok = tiny_tokenizer()
    for seed in range(2):
        routed = RoutedModel(tiny_model(arch, seed=seed))
        ev = PathEvaluator(routed, tok, exact_task, max_rows=8)
        prepared = ev.prepare(exact_task.load())
        rows = [(p, path) for p in prepared for path in PATHS]
        rewards = ev.rewards(rows)
        for (p, path), reward in zip(rows, rewards, strict=False):
            prompt = encode_prompt(tok, p.prompt)
            target = tok(p.target, add_special_tokens=False)["input_ids"]
            out = routed.generate(
                torch.tensor([prompt]),
                decisions=list(path),
                max_new_tokens=len(target),
                min_new_tokens=len(target),
                do_sample=False,
                pad_token_id=0,
            )
            assert reward == float(out[0, len(prompt) :].tolist() == target)


def test_teacher_forced_positive_case(exact_task):
    """Make a target the model's own greedy output, so the reward must be 1 for that path."""
    tok = tiny_tokenizer()
    routed = RoutedModel(tiny_model("llama"))
    ex = exact_task.load()[0]
    prompt = exact_task.prompt(ex)
    ids = torch.tensor([encode_prompt(tok, prompt)])
    path = (1, 0, 2, 1)
    out = routed.generate(ids, decisions=list(path), max_new_tokens=3, do_sample=False, pad_token_id=0)
    own = tok.decode(out[0, ids.shape[1] :])
    ex_own = type(ex)(id=ex.id, question=ex.question, answer=own, meta=ex.meta)
    ev = PathEvaluator(routed, tok, exact_task)
    task_target = exact_task.target
    exact_task.target = lambda e, *a, **k: own  # the target is exactly what greedy decoding produces
    try:
        prepared = ev.prepare([ex_own])
        assert ev.rewards([(prepared[0], path)]) == [1.0]
    finally:
        exact_task.target = task_target


@pytest.mark.parametrize("scoring", ["teacher-forced", "generate"])
def test_prompts_longer_than_the_context_are_refused(tmp_path, scoring):
    long_row = {"id": "too-long", "prompt": "word " * 40, "target": " ok"}  # 200 characters > 128 positions
    path = tmp_path / "long.jsonl"
    path.write_text(
        json.dumps({"id": "fine", "prompt": "hi", "target": " ok"}) + "\n" + json.dumps(long_row) + "\n"
    )
    task = get_task(f"jsonl:{path}")
    evaluator = PathEvaluator(
        RoutedModel(tiny_model("llama")), tiny_tokenizer(), task, scoring, max_new_tokens=8
    )
    fine, long = task.load()
    evaluator.prepare([fine])
    with pytest.raises(
        ValueError, match=r"example too-long: the prompt has \d+ tokens.*context of 128 tokens"
    ):
        evaluator.prepare([long])


def test_letter_reward_is_the_label_greedy_decoding_writes(choice_task):
    """mc-letter: correct exactly when greedy decoding writes the gold label (checked by generating)."""
    tok = tiny_tokenizer()
    routed = RoutedModel(tiny_model("llama"))
    examples = choice_task.load()
    path = (1, 0, 2, 1)

    def written(ex, decisions, n):
        ids = torch.tensor([encode_prompt(tok, choice_task.prompt(ex, tok, scoring="mc-letter"))])
        out = routed.generate(
            ids, decisions=list(decisions), max_new_tokens=n, min_new_tokens=n, do_sample=False
        )
        return out[0, ids.shape[1] :].tolist()

    # each gold label is what the model writes on `path`; the other labels are tokens it did not write
    own = {ex.id: written(ex, path, 2) for ex in examples}
    original = choice_task.continuations

    def labels(ex, scoring, **kw):
        other = [t for t in range(3, 60) if t != own[ex.id][0]][: len(ex.choices)]
        conts = [tok.decode([t, t]) for t in other]
        conts[int(ex.answer)] = tok.decode(own[ex.id])
        return conts

    choice_task.continuations = labels
    try:
        ev = PathEvaluator(routed, tok, choice_task, "mc-letter")
        prepared = ev.prepare(examples)
        assert ev.rewards([(p, path) for p in prepared]) == [1.0] * len(examples)
        default = (1, 1, 1, 1)
        expected = [float(written(ex, default, 2) == own[ex.id]) for ex in examples]
        assert ev.rewards([(p, default) for p in prepared]) == expected
    finally:
        choice_task.continuations = original


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
def test_outcome_margin_and_answer_match_options_scored_alone(arch, choice_task):
    torch.manual_seed(0)
    routed = RoutedModel(tiny_model(arch))
    tok = tiny_tokenizer()
    ev = PathEvaluator(routed, tok, choice_task, max_rows=3)
    prepared = ev.prepare(choice_task.load())
    rows = [(p, path) for p in prepared for path in PATHS]
    for (p, path), outcome in zip(rows, ev.outcomes(rows), strict=True):
        conts = choice_task.continuations(p.example, "mc-loglik", tokenizer=tok)
        alone = [_alone_loglik(routed, tok, p.prompt, c, path) for c in conts]
        others = [s for k, s in enumerate(alone) if k != p.gold]
        assert outcome.margin == pytest.approx(alone[p.gold] - max(others), abs=1e-3)
        assert outcome.answer == max(range(len(alone)), key=alone.__getitem__)
        assert outcome.reward == float(outcome.answer == p.gold)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_fidelity_counts_the_base_greedy_tokens_a_path_reproduces(arch, choice_task):
    """Fidelity f: greedy generation under the path repeats the base continuation's first f tokens only."""
    torch.manual_seed(1)
    routed = RoutedModel(tiny_model(arch))
    tok = tiny_tokenizer()
    ev = PathEvaluator(routed, tok, choice_task, max_rows=4)
    examples = choice_task.load()
    base = ev.greedy_continuations(examples, 6)
    prepared = ev.prepare(examples, continuations=base)
    rows = [(p, path) for p in prepared for path in PATHS]
    outcomes = ev.outcomes(rows)
    seen = set()
    for (p, path), outcome in zip(rows, outcomes, strict=True):
        ids = torch.tensor([encode_prompt(tok, p.prompt)])
        gen = routed.generate(ids, decisions=torch.tensor(path), max_new_tokens=6, do_sample=False)
        gen = gen[0, ids.shape[1] :].tolist()
        want = p.continuation[1].tolist()
        agree = next((k for k, (a, b) in enumerate(zip(gen, want, strict=False)) if a != b), len(want))
        assert outcome.fidelity == agree, (path, gen, want)
        seen.add(outcome.fidelity)
    assert all(ev.outcomes([(p, (1,) * 4)])[0].fidelity == len(p.continuation[1]) for p in prepared)
    assert len(seen) > 1  # the paths differ in fidelity: the test can tell


def test_routed_outcomes_decide_from_the_prompt_in_the_scoring_pass(choice_task):
    torch.manual_seed(2)
    routed = RoutedModel(tiny_model("llama"))
    routed.add_routers(num_windows=2, bottleneck=8, seed=3)
    tok = tiny_tokenizer()
    ev = PathEvaluator(routed, tok, choice_task, max_rows=2)
    prepared = ev.prepare(choice_task.load())
    for budget in (-1.0, 0.0, 1.0):
        routed.budget = budget
        outcomes, decisions = ev.routed_outcomes(prepared)
        for p, outcome, d in zip(prepared, outcomes, decisions, strict=True):
            alone = routed.route(torch.tensor([encode_prompt(tok, p.prompt)]))[0].tolist()
            assert d == alone
            fixed = ev.outcomes([(p, tuple(d))])[0]
            assert outcome.reward == fixed.reward and outcome.margin == pytest.approx(fixed.margin, abs=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_kl_and_token_agreement_equal_two_explicit_forwards(arch, choice_task):
    """The packed KL(base || path) and top-1 agreement equal those of prompt + continuation run alone."""
    torch.manual_seed(2)
    routed = RoutedModel(tiny_model(arch))
    tok = tiny_tokenizer()
    ev = PathEvaluator(routed, tok, choice_task, max_rows=4)
    examples = choice_task.load()
    prepared = ev.prepare(examples, continuations=ev.greedy_continuations(examples, 5))
    for p in prepared:
        base_out = ev.outcomes([(p, (1,) * 4)])[0]
        assert base_out.kl == pytest.approx(0.0, abs=1e-5) and base_out.token_agreement == 1.0
        cont = p.continuation[1].tolist()
        ids = torch.tensor([encode_prompt(tok, p.prompt) + cont])
        n = len(cont)
        with torch.no_grad():
            ref = routed(ids, decisions=[1, 1, 1, 1]).logits[0, -n - 1 : -1].float().log_softmax(-1)
        for path in PATHS[1:]:
            out = ev.outcomes([(p, path)])[0]
            with torch.no_grad():
                mine = routed(ids, decisions=list(path)).logits[0, -n - 1 : -1].float().log_softmax(-1)
            kl = torch.nn.functional.kl_div(mine, ref, log_target=True, reduction="none").sum(-1).mean()
            assert out.kl == pytest.approx(float(kl), rel=1e-3, abs=1e-5)
            assert out.token_agreement == float(mine.argmax(-1).eq(ref.argmax(-1)).float().mean())


@pytest.mark.parametrize("tokens", [120, 100000])
def test_continuations_past_the_context_are_refused_before_generating(tokens, choice_task, monkeypatch):
    routed, tok = RoutedModel(tiny_model("gpt2")), tiny_tokenizer()  # context 128
    ev = PathEvaluator(routed, tok, choice_task)

    def never(*a, **k):
        raise AssertionError("generated")

    monkeypatch.setattr("drllm.search.evaluator.greedy_new_tokens", never)
    with pytest.raises(ValueError, match=r"example q0: .*fidelity-tokens.*context of 128") as err:
        ev.greedy_continuations(choice_task.load(), tokens)
    assert "\n" not in str(err.value)
