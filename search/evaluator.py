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

Prefix reuse: every path of an example executes the same layers up to its first non-execute decision.
The evaluator runs each example once along the default path, records the hidden states entering every
layer, and starts each row at its first change (layers before it are skipped, the recorded state is put in).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from drllm.router import RoutedModel, encode_prompt


@dataclass
class Prepared:
    """One example turned into a token row with its scoring targets."""

    index: int
    example: object
    tokens: torch.Tensor  # [n]
    positions: torch.Tensor  # [n]
    allowed: torch.Tensor  # [n, n] bool: query i may attend key j
    targets: list[tuple[torch.Tensor, torch.Tensor]]  # per option: (predicting positions, target tokens)
    gold: int
    prompt: str = ""
    target: str = ""
    prefix: list[torch.Tensor] | None = field(default=None, repr=False)  # hidden entering each layer [n, d]
    base_reward: float | None = None


class PathEvaluator:
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

    # ------------------------------------------------------------------ preparation
    def prepare(self, examples, start_index: int = 0) -> list[Prepared]:
        """Tokenize examples into rows (prompt followed by the target or by every option)."""
        return [self._prepare_one(ex, start_index + k) for k, ex in enumerate(examples)]

    def _prepare_one(self, ex, index: int) -> Prepared:
        task, tok = self.task, self.tokenizer
        prompt = task.prompt(ex, tok, style=self.style, scoring=self.scoring)
        p = encode_prompt(tok, prompt)
        if task.kind == "choice":
            conts = task.continuations(ex, self.scoring, style=self.style, tokenizer=tok)
            gold, target = int(ex.answer), conts[int(ex.answer)]
        else:
            conts = [task.target(ex, self.scoring, style=self.style, tokenizer=tok)]
            gold, target = 0, conts[0]
        pieces = [tok(c, add_special_tokens=False)["input_ids"] for c in conts]
        if any(len(c) == 0 for c in pieces):
            raise ValueError(f"example {ex.id}: a continuation encodes to no tokens")
        self._check_length(ex, len(p), max(len(c) for c in pieces))
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

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def rewards(self, rows: list[tuple[Prepared, tuple[int, ...]]]) -> list[float]:
        """Rewards for (prepared example, decisions) rows."""
        if self.scoring == "generate":
            return self._generate_rewards(rows)
        todo = [p for p, _ in rows if self.reuse_prefix and p.prefix is None]
        self._run_prefix(list({id(p): p for p in todo}.values()))
        out: list[float | None] = [None] * len(rows)
        pending = []
        for k, (p, path) in enumerate(rows):
            start = _first_change(path) if self.reuse_prefix else 0
            if self.reuse_prefix and start == len(path):
                out[k] = p.base_reward
            else:
                pending.append((k, p, path, start))
        for chunk in _chunks(pending, self.max_rows):
            scores = self._forward(chunk)
            for (k, p, _, _), s in zip(chunk, scores, strict=False):
                out[k] = _reward(s, p.gold, self.task.kind)
        self.paths_evaluated += len(rows)
        return [float(r) for r in out]

    def release(self, prepared: Prepared) -> None:
        """Free an example's recorded prefix states once its search is done."""
        prepared.prefix = None

    def _run_prefix(self, prepared: list[Prepared]) -> None:
        """Run the default path once per example, recording the hidden states entering every layer."""
        L = self.routed.num_layers
        for chunk in _chunks(prepared, self.max_rows):
            with self.routed.recording() as states:
                scores = self._forward([(k, p, (1,) * L, 0) for k, p in enumerate(chunk)])
            for r, (p, s) in enumerate(zip(chunk, scores, strict=True)):
                p.base_reward = _reward(s, p.gold, self.task.kind)
                p.prefix = [states[i][r, : len(p.tokens)].clone() for i in range(L)]

    def _forward(self, rows) -> list[list[float]]:
        """One forward over rows ``(key, prepared, path, start)``; returns each row's option scores.

        A row with ``start > 0`` begins at layer ``start`` from the hidden states its example recorded.
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
        decisions = torch.tensor([list(path) for _, _, path, _ in rows], dtype=torch.long)
        starts = [start for _, _, _, start in rows]
        mask = routed.attention_mask_4d(allowed, pos)
        reuse = contextlib.nullcontext()
        if any(starts):
            reuse = routed.starting_at(starts, self._start_hidden(rows, width))
        with reuse:
            hidden = routed.backbone(
                ids.to(routed.device), mask, decisions, position_ids=pos.to(routed.device)
            )
        return [self._row_scores(hidden[r], p) for r, (_, p, _, _) in enumerate(rows)]

    def _start_hidden(self, rows, width: int) -> torch.Tensor:
        """``[B, width, d]``: each row's recorded state entering its start layer (zeros for rows at 0)."""
        first = next(p for _, p, _, s in rows if s > 0).prefix[0]
        out = first.new_zeros(len(rows), width, first.shape[-1])
        for r, (_, p, _, start) in enumerate(rows):
            if start > 0:
                out[r, : len(p.tokens)] = p.prefix[start]
        return out

    def _row_scores(self, hidden: torch.Tensor, p: Prepared) -> list[float]:
        where = torch.cat([w for w, _ in p.targets]).to(hidden.device)
        want = torch.cat([t for _, t in p.targets]).to(hidden.device)
        logits = self.routed.lm_logits(hidden[where])  # [m, V]
        logp = logits.float().log_softmax(-1)
        picked = logp.gather(-1, want[:, None])[:, 0].detach()
        if self.task.kind == "exact":
            return [float(logits.argmax(-1).eq(want).all())]
        sizes = [len(t) for _, t in p.targets]
        if self.scoring == "mc-letter":  # 1 for the label greedy decoding would write, 0 for the others
            produced = logits.argmax(-1).eq(want)
            return [float(s.all()) for s in produced.split(sizes)]
        return [float(s.sum()) for s in picked.split(sizes)]

    def _generate_rewards(self, rows) -> list[float]:
        from drllm.router import batch_prompts

        out = []
        for chunk in _chunks(rows, self.max_rows):
            ids, mask = batch_prompts(self.tokenizer, [p.prompt for p, _ in chunk], self.routed.device)
            decisions = torch.tensor([list(path) for _, path in chunk])
            new = greedy_new_tokens(
                self.routed, ids, mask, decisions, self.max_new_tokens, self.tokenizer.pad_token_id
            )
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            out += [float(self.task.grade(p.example, t)) for (p, _), t in zip(chunk, texts, strict=False)]
        self.paths_evaluated += len(rows)
        return out


def greedy_new_tokens(routed, ids, mask, decisions, max_new_tokens: int, pad_token_id) -> torch.Tensor:
    """Greedy routed generation for left-padded prompts; returns only the new tokens ``[B, n]``."""
    out = routed.generate(
        ids,
        attention_mask=mask,
        decisions=decisions,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_token_id,
    )
    return out[:, ids.shape[1] :]


def _reward(scores: list[float], gold: int, kind: str) -> float:
    if kind == "exact":
        return float(scores[0])
    others = [s for k, s in enumerate(scores) if k != gold]
    return float(not others or scores[gold] > max(others))  # a tie is not an answer


def _first_change(path) -> int:
    return next((i for i, d in enumerate(path) if d != 1), len(path))


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]
