"""Turning examples into packed token rows for the path evaluator (a ``PathEvaluator`` mixin).

A row is the prompt followed by every option (or the exact-answer target), each option attending only to
the prompt and to itself, plus the base model's greedy continuation packed last when fidelity and KL are
measured. Examples that cannot be scored fairly (an option of no tokens, two options of the same tokens,
a row past the context) are refused by name or skipped with a warning.
"""

from __future__ import annotations

import logging

import torch

from drllm.router import encode_prompt

from .outcome import Prepared

log = logging.getLogger("drllm.search.evaluator")


class Preparation:
    """``prompt_text``, ``gold_text``, ``usable`` and the packing of one example.

    Reads ``routed``, ``task``, ``tokenizer``, ``style``, ``scoring`` and ``max_new_tokens`` of the evaluator.
    """

    def prompt_text(self, example) -> str:
        """The prompt of an example in this evaluator's style and scoring."""
        return self.task.prompt(example, self.tokenizer, style=self.style, scoring=self.scoring)

    def gold_text(self, example) -> str:
        """The continuation scored as gold: the gold option, or the exact-answer target."""
        task, tok = self.task, self.tokenizer
        if task.kind == "choice":
            return task.continuations(example, self.scoring, style=self.style, tokenizer=tok)[
                int(example.answer)
            ]
        return task.target(example, self.scoring, style=self.style, tokenizer=tok)

    def usable(self, examples, strict: bool = False) -> list:
        """The examples that tokenize into rows this model can score (see ``prepare``).

        An example whose option encodes to no tokens or to the same tokens as another option, or that does
        not fit the context, raises ValueError naming it when ``strict``; otherwise it is skipped with a
        warning.
        """
        kept = []
        for ex in examples:
            try:
                self._prepare_one(ex, 0)
            except ValueError as err:
                if strict:
                    raise
                log.warning("skipping example %r: %s", str(ex.id), err)
                continue
            kept.append(ex)
        if examples and not kept:
            raise ValueError(f"no example can be scored; the first: {examples[0].id!r}")
        return kept

    def _prepare_one(self, ex, index: int, continuation=None) -> Prepared:
        task, tok = self.task, self.tokenizer
        prompt = self.prompt_text(ex)
        p = encode_prompt(tok, prompt)
        if not task.has_gold:  # prompts only: the base continuation packed last is all there is to score
            conts, gold, target = [], 0, ""
        elif task.kind == "choice":
            conts = task.continuations(ex, self.scoring, style=self.style, tokenizer=tok)
            gold, target = int(ex.answer), conts[int(ex.answer)]
        else:
            conts = [task.target(ex, self.scoring, style=self.style, tokenizer=tok)]
            gold, target = 0, conts[0]
        pieces = [tok(c, add_special_tokens=False)["input_ids"] for c in conts]
        if any(len(c) == 0 for c in pieces):
            raise ValueError(f"example {ex.id}: a continuation encodes to no tokens")
        for j, piece in enumerate(pieces):
            if piece in pieces[:j]:
                raise ValueError(
                    f"example {ex.id}: options {pieces.index(piece)} and {j} encode to the same tokens, so "
                    "the gold one could never win"
                )
        self._check_length(ex, len(p), max((len(c) for c in pieces), default=0))
        if continuation is not None and len(continuation):
            self._check_length(ex, len(p), len(continuation))
            pieces.append([int(x) for x in continuation])
        tokens, positions, owner = list(p), list(range(len(p))), [-1] * len(p)
        targets = []
        for k, c in enumerate(pieces):
            start = len(tokens)
            predict = [len(p) - 1] + [start + t for t in range(len(c) - 1)]
            targets.append((torch.tensor(predict), torch.tensor(c)))
            tokens += c
            positions += range(len(p), len(p) + len(c))
            owner += [k] * len(c)
        own = torch.tensor(owner)
        n = len(tokens)
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        same = (own[:, None] == own[None, :]) | (own[None, :] == -1)
        packed = None if continuation is None or not len(continuation) else targets.pop()
        return Prepared(
            index,
            ex,
            torch.tensor(tokens),
            torch.tensor(positions),
            causal & same,
            targets,
            gold,
            prompt=prompt,
            target=target,
            prompt_length=len(p),
            continuation=packed,
        )

    def _check_length(self, ex, prompt: int, continuation: int) -> None:
        """Refuse an example whose prompt plus answer (or decoding budget) exceeds the model's context."""
        limit = self.routed.context_length
        extra = self.max_new_tokens if self.scoring == "generate" else continuation
        if limit is not None and prompt + extra > limit:
            what = f"{extra} new tokens" if self.scoring == "generate" else f"a {extra}-token answer"
            raise ValueError(
                f"example {ex.id}: the prompt has {prompt} tokens; with {what} that exceeds the model's "
                f"context of {limit} tokens"
            )
