"""What one path does on one example (Outcome) and one example made ready to score (Prepared)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass(frozen=True)
class Outcome:
    """What one path does on one example.

    Attributes:
        reward: 1.0 when the path answers correctly, else 0.0.
        margin: multiple choice: gold option log-likelihood minus the best wrong option's (> 0 when
            correct under ``mc-loglik``); exact answers: the target's mean token log-probability. None for
            the ``generate`` scoring.
        answer: multiple choice: the option the path picks (None on a tie); exact answers scored by
            ``generate``: the final answer extracted from the decoded text; ``teacher-forced``: None.
        min_logprob: exact answers: the target's smallest token log-probability.
        fidelity: leading tokens of the base model's greedy continuation the path reproduces (None when
            the example was prepared without one).
        loglik: ``mc-loglik`` scoring: every option's log-likelihood (what ``with_gold`` rescores from).
        kl: mean over the base model's greedy continuation (teacher-forced) of KL(base || path) between
            the next-token distributions, in nats (None without a continuation).
        token_agreement: share of those positions where the path's top-1 token is the base model's.
    """

    reward: float
    margin: float | None = None
    answer: int | str | None = None
    min_logprob: float | None = None
    fidelity: int | None = None
    loglik: tuple[float, ...] | None = None
    kl: float | None = None
    token_agreement: float | None = None

    def with_gold(self, gold: int) -> Outcome:
        """The same path's outcome had option ``gold`` been the right one (``mc-loglik`` outcomes only).

        Raises:
            ValueError: when the outcome has no per-option log-likelihoods, or ``gold`` is not an option.
        """
        if self.loglik is None:
            raise ValueError("this outcome has no per-option log-likelihoods to rescore")
        if not 0 <= gold < len(self.loglik):
            raise ValueError(f"gold must be an option (0 to {len(self.loglik) - 1}), got {gold}")
        others = [s for k, s in enumerate(self.loglik) if k != gold]
        margin = self.loglik[gold] - max(others) if others else 0.0
        return replace(self, reward=_reward(list(self.loglik), gold), margin=margin)


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
    prompt_length: int = 0  # tokens of the prompt, the first positions of the row
    prefix: list[torch.Tensor] | None = field(default=None, repr=False)  # hidden entering each layer [n, d]
    base: Outcome | None = None  # the default path's outcome, set with the prefix
    continuation: tuple[torch.Tensor, torch.Tensor] | None = None  # base greedy tokens packed last (fidelity)
    base_logp: torch.Tensor | None = field(default=None, repr=False)  # [C, V] base log-probs there

    @property
    def base_reward(self) -> float | None:
        """Reward of the default (all-execute) path, once the prefix has run."""
        return None if self.base is None else self.base.reward

    def with_gold(self, gold: int) -> Prepared:
        """This example with option ``gold`` declared right (the wrong-gold control).

        It shares the recorded prefix when the base outcome can be rescored for ``gold`` (``mc-loglik``);
        otherwise its prefix and base outcome are run again (``dataclasses.replace`` alone would keep a
        base outcome scored for the old gold).
        """
        if self.base is not None and self.base.loglik is not None:
            return replace(self, gold=gold, base=self.base.with_gold(gold))
        return replace(self, gold=gold, prefix=None, base=None)


def _reward(scores: list[float], gold: int) -> float:
    others = [s for k, s in enumerate(scores) if k != gold]
    return float(not others or scores[gold] > max(others))  # a tie is not an answer


def _answer(scores: list[float]) -> int | None:
    """The option with the highest score, None on a tie."""
    best = max(scores)
    winners = [k for k, s in enumerate(scores) if s == best]
    return winners[0] if len(winners) == 1 else None
