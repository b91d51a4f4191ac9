"""The batched path evaluator: rewards for many (example, decisions) rows per forward pass.

Scorings (the reward is 1.0 for a correct answer, else 0.0):

- ``teacher-forced``: one forward over prompt + target; correct when the argmax at every target position
  is the next target token, which is exactly when greedy decoding would produce the target.
- ``mc-loglik``: the gold option has the highest summed log-likelihood (a tie is wrong).
- ``mc-letter``: greedy decoding would write the gold label (the argmax at each of its positions is its
  next token), i.e. the letter the model produces, checked without a decode loop.
  For both, all options of an example share one row: the prompt is followed by every option, each
  attending only to the prompt and to itself (a 4D mask, positions restarting after the prompt), so the
  prompt is run once.
- ``generate``: greedy decoding through ``RoutedModel.generate``, then the task grades the text.

Every scored row yields an ``Outcome``: the 0/1 reward, a continuous score (the gold option's margin over
the best wrong option, or the target's mean token log-probability), the answer the path gives, and, when
the example was prepared with the base model's greedy continuation, the greedy fidelity: how many of its
leading tokens the path reproduces (the continuation is packed into the same row as one more segment, so
fidelity costs no extra forward).

Prefix reuse: every path of an example executes the same layers up to its first non-execute decision.
The evaluator runs each example once along the default path, records the hidden states entering every
layer, and starts each row at its first change (layers before it are skipped, the recorded state is put in).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace

import torch

from drllm.router import RoutedModel

from .decoding import (  # noqa: F401 - moved; importable from here as before
    eos_ids,
    greedy_new_tokens,
    until_eos,
)
from .outcome import (  # noqa: F401 - moved; importable from here as before
    Outcome,
    Prepared,
    _answer,
    _reward,
)
from .preparation import Preparation
from .tasks.grading import extract_final_answer

log = logging.getLogger(__name__)
FIDELITY = "fidelity tokens (--fidelity-tokens)"  # what greedy_continuations' budget is called in refusals


class PathEvaluator(Preparation):
    """Scores (prepared example, decisions) rows in batches; see the module docstring."""

    def __init__(
        self,
        routed: RoutedModel,
        tokenizer,
        task,
        scoring: str | None = None,
        style: str = "plain",
        max_rows: int = 32,
        max_new_tokens: int = 32,
        reuse_prefix: bool = True,
    ):
        self.routed, self.tokenizer, self.task = routed, tokenizer, task
        self.scoring = task._check_scoring(scoring)
        self.style, self.max_rows, self.max_new_tokens = style, max_rows, max_new_tokens
        self.reuse_prefix = reuse_prefix
        self.paths_evaluated = 0
        self._capturing = False  # inside _base_distributions: rows keep their log-probs as the base's

    # ------------------------------------------------------------------ preparation
    def prepare(self, examples, start_index: int = 0, continuations=None) -> list[Prepared]:
        """Tokenize examples into rows (prompt followed by the target or by every option).

        Args:
            examples: the task's examples.
            start_index: index of the first example (kept in ``Prepared.index``).
            continuations: per example, the base model's greedy continuation (token ids, from
                ``greedy_continuations``), packed as one more segment so outcomes carry the fidelity.
        """
        if continuations is None and not self.task.has_gold:  # prompts only: their own base continuation
            what = "new tokens (max_new_tokens)"
            continuations = self.greedy_continuations(examples, self.max_new_tokens, what)
        conts = continuations if continuations is not None else [None] * len(examples)
        if not self.task.has_gold and any(c is None or not len(c) for c in conts):
            raise ValueError("a prompts-only example needs the base model's continuation (1 or more tokens)")
        if len(conts) != len(examples):
            raise ValueError(f"{len(conts)} continuations for {len(examples)} examples")
        pairs = enumerate(zip(examples, conts, strict=True))
        prepared = [self._prepare_one(ex, start_index + k, c) for k, (ex, c) in pairs]
        self._base_distributions([p for p in prepared if p.continuation is not None])
        return prepared

    @torch.no_grad()
    def _base_distributions(self, prepared: list[Prepared]) -> None:
        """Keep the base model's log-probabilities over each packed continuation (what KL is measured to)."""
        L = self.routed.num_layers
        for chunk in _chunks(prepared, self.max_rows):
            self._capturing = True
            try:
                self._forward([(k, p, (1,) * L, 0) for k, p in enumerate(chunk)])
            finally:
                self._capturing = False

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def rewards(self, rows: list[tuple[Prepared, tuple[int, ...]]]) -> list[float]:
        """Rewards for (prepared example, decisions) rows."""
        return [o.reward for o in self.outcomes(rows)]

    @torch.no_grad()
    def outcomes(self, rows: list[tuple[Prepared, tuple[int, ...]]]) -> list[Outcome]:
        """Outcomes (reward, margin, answer, fidelity) for (prepared example, decisions) rows."""
        packed = self._packed_outcomes(rows)
        if self.scoring != "generate":
            return packed
        decoded = self._generate_outcomes(rows)  # the reward comes from decoding and grading
        return [replace(k, reward=d.reward, answer=d.answer) for k, d in zip(packed, decoded, strict=True)]

    def _packed_outcomes(self, rows) -> list[Outcome]:
        todo = [p for p, _ in rows if self.reuse_prefix and p.prefix is None]
        self._run_prefix(list({id(p): p for p in todo}.values()))
        out: list[Outcome | None] = [None] * len(rows)
        pending = []
        for k, (p, path) in enumerate(rows):
            start = _first_change(path) if self.reuse_prefix else 0
            if self.reuse_prefix and start == len(path):
                out[k] = p.base
            else:
                pending.append((k, p, path, start))
        for chunk in _chunks(pending, self.max_rows):
            for (k, _, _, _), outcome in zip(chunk, self._forward(chunk), strict=True):
                out[k] = outcome
        if self.scoring != "generate":
            self.paths_evaluated += len(rows)
        return out

    @torch.no_grad()
    def routed_outcomes(self, prepared: list[Prepared]) -> tuple[list[Outcome], list[list[int]]]:
        """Outcomes where the routers decide each row's path from its prompt, in the scoring forward.

        One forward per row: the routers pool the prompt positions of the packed row (what they would
        read from the prompt alone) and their decisions apply to the options in the same pass.

        Returns:
            ``(outcomes, decisions)``, the decisions as lists of ``L`` ints.
        """
        outcomes, decisions = [], []
        for chunk in _chunks(prepared, self.max_rows):
            rows = [(k, p, None, 0) for k, p in enumerate(chunk)]
            outcomes += self._forward(rows)
            decisions += self.routed.last_decisions.tolist()
        if self.scoring == "generate":  # decode along the paths the routers chose, then grade
            paths = [tuple(d) for d in decisions]
            decoded = self._generate_outcomes(list(zip(prepared, paths, strict=True)))
            merged = zip(outcomes, decoded, strict=True)
            outcomes = [replace(k, reward=d.reward, answer=d.answer) for k, d in merged]
        else:
            self.paths_evaluated += len(prepared)
        return outcomes, decisions

    def release(self, prepared: Prepared) -> None:
        """Free an example's recorded prefix states (and base distributions) once its search is done."""
        prepared.prefix = None
        prepared.base_logp = None

    def _run_prefix(self, prepared: list[Prepared]) -> None:
        """Run the default path once per example, recording the hidden states entering every layer."""
        L = self.routed.num_layers
        for chunk in _chunks(prepared, self.max_rows):
            with self.routed.recording() as states:
                scores = self._forward([(k, p, (1,) * L, 0) for k, p in enumerate(chunk)])
            for r, (p, outcome) in enumerate(zip(chunk, scores, strict=True)):
                p.base = outcome
                p.prefix = [states[i][r, : len(p.tokens)].clone() for i in range(L)]

    def _forward(self, rows) -> list[Outcome]:
        """One forward over rows ``(key, prepared, path, start)``; returns each row's outcome.

        A row with ``start > 0`` begins at layer ``start`` from the hidden states its example recorded.
        With every path None the routers decide, reading each row's prompt positions.
        """
        routed = self.routed
        width = max(len(p.tokens) for _, p, _, _ in rows)
        batch = len(rows)
        ids = torch.zeros(batch, width, dtype=torch.long)
        pos = torch.zeros(batch, width, dtype=torch.long)
        allowed = torch.eye(width, dtype=torch.bool).repeat(batch, 1, 1)  # padding attends to itself
        for r, (_, p, _, _) in enumerate(rows):
            n = len(p.tokens)
            ids[r, :n], pos[r, :n], allowed[r, :n, :n] = p.tokens, p.positions, p.allowed
        routing = all(path is None for _, _, path, _ in rows)
        decisions, prompt_mask = None, None
        if routing:
            prompt_mask = torch.zeros(batch, width, dtype=torch.long)
            for r, (_, p, _, _) in enumerate(rows):
                prompt_mask[r, : p.prompt_length] = 1
        else:
            decisions = torch.tensor([list(path) for _, _, path, _ in rows], dtype=torch.long)
        starts = [start for _, _, _, start in rows]
        mask = routed.attention_mask_4d(allowed, pos)
        reuse = contextlib.nullcontext()
        if any(starts):
            reuse = routed.starting_at(starts, self._start_hidden(rows, width))
        with reuse:
            hidden = routed.backbone(
                ids.to(routed.device),
                mask,
                decisions,
                position_ids=pos.to(routed.device),
                route_mask=None if prompt_mask is None else prompt_mask.to(routed.device),
            )
        return [self._row_outcome(hidden[r], p) for r, (_, p, _, _) in enumerate(rows)]

    def _start_hidden(self, rows, width: int) -> torch.Tensor:
        """``[B, width, d]``: each row's recorded state entering its start layer (zeros for rows at 0)."""
        first = next(p for _, p, _, s in rows if s > 0).prefix[0]
        out = first.new_zeros(len(rows), width, first.shape[-1])
        for r, (_, p, _, start) in enumerate(rows):
            if start > 0:
                out[r, : len(p.tokens)] = p.prefix[start]
        return out

    def _row_outcome(self, hidden: torch.Tensor, p: Prepared) -> Outcome:
        segments = p.targets + ([p.continuation] if p.continuation is not None else [])
        where = torch.cat([w for w, _ in segments]).to(hidden.device)
        want = torch.cat([t for _, t in segments]).to(hidden.device)
        logits = self.routed.lm_logits(hidden[where])  # [m, V]
        hits = logits.argmax(-1).eq(want)
        picked = logits.float().log_softmax(-1).gather(-1, want[:, None])[:, 0]
        sizes = [len(t) for _, t in segments]
        hits_by, picked_by = hits.split(sizes), picked.split(sizes)
        fidelity = kl = agreement = None
        if p.continuation is not None:
            run = hits_by[-1].long().cumprod(0)
            fidelity = int(run.sum())
            own = picked_by[-1]
            hits_by, picked_by = hits_by[:-1], picked_by[:-1]
            kl, agreement = self._closeness(p, logits[-len(p.continuation[1]) :])
        if not self.task.has_gold:  # right when the path reproduces the base continuation whole
            return Outcome(
                float(fidelity == len(own)),
                margin=float(own.mean()),
                min_logprob=float(own.min()),
                fidelity=fidelity,
                kl=kl,
                token_agreement=agreement,
            )
        if self.task.kind == "exact":
            logp = picked_by[0]
            return Outcome(
                float(hits_by[0].all()),
                margin=float(logp.mean()),
                min_logprob=float(logp.min()),
                fidelity=fidelity,
                kl=kl,
                token_agreement=agreement,
            )
        loglik = [float(s.sum()) for s in picked_by]
        if self.scoring == "mc-letter":  # the label greedy decoding would write
            produced = [float(h.all()) for h in hits_by]
            reward, answer = _reward(produced, p.gold), _answer(produced)
        else:
            reward, answer = _reward(loglik, p.gold), _answer(loglik)
        others = [s for k, s in enumerate(loglik) if k != p.gold]
        margin = loglik[p.gold] - max(others) if others else 0.0
        scores = tuple(loglik) if self.scoring == "mc-loglik" else None  # mc-letter's reward is not from them
        return Outcome(
            reward,
            margin=margin,
            answer=answer,
            fidelity=fidelity,
            loglik=scores,
            kl=kl,
            token_agreement=agreement,
        )

    def _closeness(self, p: Prepared, logits: torch.Tensor) -> tuple[float | None, float | None]:
        """KL(base || path) and top-1 agreement over the continuation, from its logits ``[C, V]``."""
        logp = logits.float().log_softmax(-1)
        if self._capturing:
            p.base_logp = logp
            return 0.0, 1.0
        if p.base_logp is None:
            return None, None
        base = p.base_logp.float().to(logp.device)
        kl = torch.nn.functional.kl_div(logp, base, log_target=True, reduction="none").sum(-1)
        return float(kl.mean()), float(logp.argmax(-1).eq(base.argmax(-1)).float().mean())

    def _generate_outcomes(self, rows) -> list[Outcome]:
        from drllm.router import batch_prompts

        out = []
        for chunk in _chunks(rows, self.max_rows):
            ids, mask = batch_prompts(self.tokenizer, [p.prompt for p, _ in chunk], self.routed.device)
            decisions = torch.tensor([list(path) for _, path in chunk])
            new = greedy_new_tokens(
                self.routed, ids, mask, decisions, self.max_new_tokens, self.tokenizer.pad_token_id
            )
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            for (p, _), text in zip(chunk, texts, strict=True):
                answer = extract_final_answer(text) if self.task.kind == "exact" else text.strip()
                out.append(Outcome(float(self.task.grade(p.example, text)), answer=answer))
        self.paths_evaluated += len(rows)
        return out

    def check_room(self, examples, new_tokens: int, what: str = FIDELITY) -> None:
        """Refuse (ValueError naming the first example) a prompt that leaves no room for ``new_tokens``."""
        from drllm.router import encode_prompt

        limit = self.routed.context_length
        if limit is None or not new_tokens:
            return
        for ex in examples:
            n = len(encode_prompt(self.tokenizer, self.prompt_text(ex)))
            if n + new_tokens > limit:
                raise ValueError(
                    f"example {ex.id}: the prompt has {n} tokens; with {new_tokens} {what} that "
                    f"exceeds the model's context of {limit} tokens: lower it or shorten the prompt"
                )

    @torch.no_grad()
    def greedy_continuations(self, examples, max_new_tokens: int, what: str = FIDELITY) -> list[list[int]]:
        """The base model's greedy continuation of each example's prompt, up to and including EOS.

        Raises:
            ValueError: before generating anything, naming the first example whose prompt plus
                ``max_new_tokens`` (``what``: the budget as the user set it) exceeds the model's context.
        """
        from drllm.router import batch_prompts

        examples = list(examples)
        self.check_room(examples, max_new_tokens, what)
        eos = eos_ids(self.tokenizer, self.routed.model)
        out = []
        for chunk in _chunks(list(examples), self.max_rows):
            prompts = [self.prompt_text(ex) for ex in chunk]
            ids, mask = batch_prompts(self.tokenizer, prompts, self.routed.device)
            every = torch.ones(len(chunk), self.routed.num_layers, dtype=torch.long)
            pad = self.tokenizer.pad_token_id
            new = greedy_new_tokens(self.routed, ids, mask, every, max_new_tokens, pad)
            out += [until_eos(row, eos) for row in new.tolist()]
        return out


def _first_change(path) -> int:
    return next((i for i, d in enumerate(path) if d != 1), len(path))


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]
