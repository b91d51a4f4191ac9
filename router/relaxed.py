"""Relaxed routing for training: hard decisions in the forward pass, gradients through a Gumbel-softmax.

    relaxation = Relaxation(routed.routers, tau=1.0, fixed=[0, 1, 29])
    with relaxed(routed, relaxation):
        hidden = routed.backbone(ids, mask, route_mask=prompt_mask)   # routers decide, layer by layer
    layers = relaxation.layers()            # [B] layers each row ran (straight-through: carries a gradient)
    expected = relaxation.expected_layers() # [B] the same under the routers' softmax (a smooth budget term)

Each routed layer asks its router for logits ``[B, 3]`` on the hidden states entering it (pooled over the
prompt, as at inference), draws a hard one-hot decision per sequence with ``gumbel_softmax(hard=True)``
(``sample=False``: the argmax, as deployed) and returns ``g_skip * h + g_execute * f(h)`` (``+ g_repeat *
f(f(h))`` with repeats allowed). The forward value is exactly the hard path's; the gradient reaches the
routers through the soft sample. ``fixed`` layers always execute. ``groups`` ties rows: row b runs the
path of row ``groups[b]`` (its logits and its noise), so a prompt's teacher row and its answer-option rows
share one sampled path. Without a cache only (training).

With ``straight_through=False`` (the score-function estimator: no gradient through the model) each layer
runs exactly like an inference call with per-row decisions: only the rows that execute a layer compute it.
Routers with sublayer actions (``actions=5``: the MLP alone, the attention alone) train this way only; their
layer counts are compute, a unit costing its share of the block (``unit_costs``), and the budget prices a
unit by the share it saves, as ``RoutedModel.budget`` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch.nn import functional as F

from .decisions import EXECUTE, REPEAT, SKIP


class Relaxation:
    """Per-call state of a relaxed forward: the routers, the temperature and the gates drawn so far."""

    def __init__(
        self,
        routers,
        tau: float = 1.0,
        fixed: Iterable[int] = (),
        allow_repeat: bool = False,
        sample: bool = True,
        generator: torch.Generator | None = None,
        budget: float = 0.0,
        straight_through: bool = True,
        groups: torch.Tensor | None = None,
    ):
        if not tau > 0:
            raise ValueError(f"the Gumbel-softmax temperature must be > 0, got {tau!r}")
        self.routers = routers
        self.num_layers = routers.config.num_layers
        self.tau = float(tau)
        self.fixed = {int(i) % self.num_layers for i in fixed}
        self.allow_repeat = allow_repeat
        self.sample = sample
        self.generator = generator
        self.budget = float(budget)  # added to the skip logit, as ``RoutedModel.budget`` does at inference
        self.straight_through = straight_through  # False: hard gates carry no gradient (score-function)
        # row b takes the logits and the noise of row groups[b]: rows of one prompt run one sampled path
        self.groups = None if groups is None else torch.as_tensor(groups, dtype=torch.long)
        self.actions = routers.config.actions
        self.unit_costs: tuple[float, float] | None = None  # (MLP, attention) shares; set by ``relaxed``
        self.reset()

    def reset(self) -> None:
        """Forget the gates of the last forward."""
        self.gates: list[torch.Tensor | None] = [None] * self.num_layers  # [B, 3] one-hot (straight-through)
        self.probs: list[torch.Tensor | None] = [None] * self.num_layers  # [B, 3] softmax of the logits
        self._weights = None
        self._all: torch.Tensor | None = None  # [B, L, 3] logits of read_layer routers

    def gate(self, index: int, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        """The gate ``[B, 3]`` of layer ``index`` (None: the layer is fixed and executes)."""
        read = self.routers.config.read_layer
        if index in self.fixed or (read is not None and index < read):
            return None
        logits = self._logits(index, hidden, mask)
        if self.budget:
            logits = logits + logits.new_tensor(self._budget_row())
        if not self.allow_repeat:
            logits = logits.masked_fill(_one_hot(REPEAT, logits), float("-inf"))
        if self.groups is not None:
            logits = logits[self.groups.to(logits.device)]
        probs = logits.softmax(-1)
        if self.sample:
            gate = _gumbel_hard(logits, self.tau, self.generator, self.groups)
        else:  # the deployed argmax, with the softmax's gradient
            hard = F.one_hot(logits.argmax(-1), self.actions).to(probs.dtype)
            gate = hard - probs.detach() + probs
        if not self.straight_through:
            gate = gate.detach()  # the model runs the sampled path; only ``probs`` keeps a gradient
        self.gates[index], self.probs[index] = gate, probs
        return gate

    def _budget_row(self) -> list[float]:
        """What the budget adds to each action's logit: all of it to skip, a unit the share it saves."""
        row = [self.budget, 0.0, 0.0]
        if self.actions == 5:
            mlp, attention = self._unit_costs()
            row += [self.budget * (1.0 - mlp), self.budget * (1.0 - attention)]
        return row

    def _unit_costs(self) -> tuple[float, float]:
        if self.unit_costs is None:
            raise RuntimeError("routers with 5 actions need unit_costs (relaxed() sets them from the model)")
        return self.unit_costs

    def _logits(self, index: int, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        routers = self.routers
        batch, length = hidden.shape[:2]
        if self._weights is None:
            self._weights = routers.pool_weights(mask, batch, length, hidden.device)
        if routers.config.read_layer is None:
            return routers(index, hidden, mask, self._weights)
        if self._all is None:  # every router reads the read layer's input, once
            self._all = routers.forward_all(hidden, mask, self._weights)
        return self._all[:, index]

    def layers(self) -> torch.Tensor:
        """Layers each row ran ``[B]``, differentiable through the straight-through gates."""
        return self._count(self.gates)

    def deployed_layers(self) -> torch.Tensor:
        """Layers each row runs with the argmax decisions, as deployed (no noise, no gradient) ``[B]``."""
        return self._count(
            [
                None if p is None else F.one_hot(p.detach().argmax(-1), self.actions).float()
                for p in self.probs
            ]
        )

    def path_log_prob(self) -> torch.Tensor:
        """Log-probability ``[B]`` of each row's sampled path under the routers' softmax (score-function)."""
        total = None
        for gate, probs in zip(self.gates, self.probs, strict=True):
            if gate is None:
                continue
            term = (probs.clamp(min=1e-12).log() * gate.detach()).sum(-1)
            total = term if total is None else total + term
        if total is None:
            raise RuntimeError("no relaxed forward has run (or every layer is fixed)")
        return total

    def deviated(self) -> torch.Tensor:
        """Rows ``[B]`` (bool) whose gates left the argmax of their logits at some layer of the last forward.

        A row that never did ran its deployed path: the same decisions on the same states, layer by layer.
        """
        out = torch.zeros(self._batch(), dtype=torch.bool)
        for gate, probs in zip(self.gates, self.probs, strict=True):
            if gate is not None:
                out |= (gate.detach().argmax(-1) != probs.detach().argmax(-1)).cpu()
        return out

    def expected_layers(self) -> torch.Tensor:
        """Expected layers per row ``[B]`` under the routers' softmax (the fixed layers count 1)."""
        return self._count(self.probs)

    def decisions(self) -> torch.Tensor:
        """The hard decisions ``[B, L]`` of the last forward."""
        batch = self._batch()
        columns = [
            torch.full((batch,), EXECUTE, dtype=torch.long) if g is None else g.detach().argmax(-1).cpu()
            for g in self.gates
        ]
        return torch.stack(columns, 1)

    def _batch(self) -> int:
        found = next((g for g in self.gates if g is not None), None)
        if found is None:
            raise RuntimeError("no relaxed forward has run (or every layer is fixed)")
        return found.shape[0]

    def _count(self, values: list[torch.Tensor | None]) -> torch.Tensor:
        batch = self._batch()
        costs = [0.0, 1.0, 2.0] + (list(self._unit_costs()) if self.actions == 5 else [])
        weight = torch.tensor(costs)
        total = None
        fixed = 0
        for v in values:
            if v is None:
                fixed += 1
                continue
            term = v @ weight.to(v.device, v.dtype)
            total = term if total is None else total + term
        assert total is not None and total.shape[0] == batch
        return total + fixed


def run_relaxed(
    layer_call, hidden: torch.Tensor, gate: torch.Tensor | None, allow_repeat: bool, skipped=None, damped=None
):
    """``g_skip s(h) + g_execute f(h) (+ g_repeat r(f(h), f(f(h))))`` for one layer.

    ``layer_call(h)`` runs the layer once; ``skipped(h)`` is what a skip leaves (default ``h``) and
    ``damped(once, twice)`` what a repeat leaves (default ``twice``): the stand-ins, when there are some.
    """
    once = layer_call(hidden)
    if gate is None:
        return once
    g = gate.to(hidden.dtype).view(gate.shape[0], *([1] * (hidden.dim() - 1)), 3)
    out = g[..., SKIP] * (hidden if skipped is None else skipped(hidden)) + g[..., EXECUTE] * once
    if allow_repeat:
        twice = layer_call(once)
        out = out + g[..., REPEAT] * (twice if damped is None else damped(once, twice))
    return out


@contextlib.contextmanager
def relaxed(routed, relaxation: Relaxation) -> Iterator[Relaxation]:
    """Run the forwards inside the context with relaxed routing (``routed.backbone`` without decisions)."""
    if routed.routers is None or routed.routers is not relaxation.routers:
        raise ValueError("relaxed routing needs the model's own routers attached (routed.add_routers)")
    state = routed._state
    if routed.routers.config.actions == 5:
        if relaxation.straight_through:
            raise ValueError(
                "routers with sublayer actions (actions=5) train with the score-function estimator only "
                "(straight_through=False): a straight-through gradient would run every unit of every layer"
            )
        relaxation.unit_costs = state.unit_costs
    if state.relaxation is not None:
        raise RuntimeError("relaxed routing does not nest")
    relaxation.reset()
    state.relaxation = relaxation
    try:
        yield relaxation
    finally:
        state.relaxation = None


def _gumbel_hard(
    logits: torch.Tensor, tau: float, generator: torch.Generator | None, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.gumbel_softmax(logits, tau, hard=True)`` with an optional seeded generator (-inf logits stay 0).

    With ``groups``, row b takes the noise of row ``groups[b]``.
    """
    uniform = torch.rand(logits.shape, generator=generator, device="cpu")
    uniform = (uniform if groups is None else uniform[groups]).to(logits.device)
    gumbels = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
    soft = ((logits + gumbels) / tau).softmax(-1)
    hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def _one_hot(index: int, like: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(like.shape[-1], dtype=torch.bool, device=like.device)
    mask[index] = True
    return mask.expand_as(like)
