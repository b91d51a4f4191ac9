"""A static path learned on the dense objective over any action set, at a budget in multiply-adds.

    path, history = fit_static_path(routed, rows, val_rows, PathSettings(0.8, UNIT_ACTIONS), pad_id, start)

The blocks-only static router of ``drllm.train.kl`` spends layers; this one spends compute, so a path may
mix whole-block skips with sublayer units (``MLP_ONLY``: attention off; ``ATTENTION_ONLY``: MLP off) and
be compared, trained identically, with the blocks-only path at the same multiply-adds: the same rows,
steps, seed, learning rate and estimator, only the action set differs (``BLOCK_ACTIONS`` against
``UNIT_ACTIONS``).

One logit per layer and action. Per step, every prompt of the batch draws its own path from
``softmax(logits - price * cost)`` (``cost`` the action's share of the full model's multiply-adds per token,
times L, so a whole block costs about 1), and the path's KL to the base model over the teacher-forced
continuation is its reward: REINFORCE with a running-mean baseline, no gradient through the frozen model
(the straight-through estimate drifts near the base model; see the README). The price is moved by dual
ascent on the compute of the deployed path (the per-layer argmax), and set exactly at the end: the least
price whose deployed path costs at most ``target_compute``. The first two layers and the last always run.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from drllm.router import EXECUTE, SKIP, block_macs, path_macs
from drllm.router.decisions import ATTENTION_ONLY, MLP_ONLY
from drllm.search.closeness import batch_tensors, per_row_kl, teacher_log_probs

from .kl import protected_layers

BLOCK_ACTIONS = (SKIP, EXECUTE)
UNIT_ACTIONS = (SKIP, EXECUTE, MLP_ONLY, ATTENTION_ONLY)


@dataclass
class PathSettings:
    """Everything that decides a run (its identity)."""

    target_compute: float
    actions: tuple[int, ...] = BLOCK_ACTIONS
    epochs: int = 1
    batch_size: int = 8
    lr: float = 0.05
    dual_lr: float = 0.1
    start_margin: float = 2.0
    protected: tuple[int, ...] = (0, 1, -1)
    seed: int = 0

    def check(self) -> None:
        """Refuse a setting that cannot train."""
        if not 0 < self.target_compute < 1:
            raise ValueError(f"target_compute must lie in (0, 1), got {self.target_compute!r}")
        if set(self.actions) - set(UNIT_ACTIONS) or EXECUTE not in self.actions or SKIP not in self.actions:
            raise ValueError(f"actions must include skip and execute, among {UNIT_ACTIONS}: {self.actions}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")

    def identity(self) -> dict:
        """The settings as JSON-ready values."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def action_costs(config, num_layers: int, actions, prompt_tokens: int) -> torch.Tensor:
    """``[L, A]``: each action's share of the full model's multiply-adds per prompt token, times L."""
    full = sum(block_macs(config, i, prompt_tokens)["total"] for i in range(num_layers))
    costs = torch.zeros(num_layers, len(actions))
    for i in range(num_layers):
        part = block_macs(config, i, prompt_tokens)
        attention = part["attention_projections"] + part["attention_context"]
        by_action = {SKIP: 0.0, EXECUTE: part["total"], MLP_ONLY: part["mlp"], ATTENTION_ONLY: attention}
        costs[i] = torch.tensor([by_action[a] for a in actions]) * num_layers / full
    return costs


def fit_static_path(routed, rows, val_rows, settings: PathSettings, pad_id: int, start) -> tuple[list, list]:
    """Train a static path on teacher ``rows``; the deployed path and the per-epoch history.

    Args:
        routed: the model (no routers are used).
        rows: teacher rows to train on (``drllm.search.teacher.build_teacher``).
        val_rows: teacher rows the deployed path's KL is validated on (may be empty).
        settings: the run's settings.
        pad_id: the tokenizer's pad id.
        start: the path training starts from (its actions must be in ``settings.actions``).
    """
    settings.check()
    L, actions = routed.num_layers, list(settings.actions)
    if len(start) != L or set(start) - set(actions):
        raise ValueError(f"start path {list(start)} is not {L} decisions among {actions}")
    tokens = max(1, round(sum(len(r["prompt_ids"]) for r in rows) / max(1, len(rows))))
    costs = action_costs(routed.config, L, actions, tokens)
    fixed = protected_layers(L, settings.protected)
    logits = torch.full((L, len(actions)), -settings.start_margin)
    logits[torch.arange(L), torch.tensor([actions.index(a) for a in start])] = settings.start_margin
    logits.requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=settings.lr)
    generator = torch.Generator().manual_seed(settings.seed)
    price, baseline, history = 0.0, None, []
    value = torch.tensor(actions)
    free = torch.ones(L, dtype=torch.bool)
    free[fixed] = False
    steps = -(-len(rows) // settings.batch_size)
    for epoch in range(settings.epochs):
        order = list(range(len(rows)))
        random.Random(settings.seed * 1000 + epoch).shuffle(order)
        sums = {"kl": 0.0, "compute": 0.0, "n": 0}
        bar = tqdm(range(steps), desc=f"static path epoch {epoch + 1}/{settings.epochs}", leave=False)
        for step in bar:
            chunk = [rows[i] for i in order[step * settings.batch_size : (step + 1) * settings.batch_size]]
            batch = batch_tensors(chunk, pad_id, routed.device)
            teacher = teacher_log_probs(routed, batch)
            log_probs = torch.log_softmax(logits - price * costs, -1)  # [L, A]
            drawn = torch.multinomial(log_probs.detach().exp(), len(chunk), True, generator=generator).T
            drawn[:, ~free] = actions.index(EXECUTE)  # [B, L] action indices
            with torch.no_grad():
                kl = _path_kl(routed, batch, teacher, value[drawn])
            baseline = kl.mean() if baseline is None else 0.9 * baseline + 0.1 * kl.mean()
            chosen = log_probs.gather(1, drawn.T).T  # [B, L]
            loss = ((kl - baseline)[:, None] * chosen[:, free]).sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            deployed = _deployed(logits.detach(), costs, price, free, actions)
            compute = float(costs[torch.arange(L), deployed].sum()) / L
            price += settings.dual_lr * (compute - settings.target_compute) * L
            sums["kl"] += float(kl.sum())
            sums["compute"] += compute * len(chunk)
            sums["n"] += len(chunk)
            bar.set_postfix(kl=f"{sums['kl'] / sums['n']:.3f}", compute=f"{sums['compute'] / sums['n']:.3f}")
        bar.close()
        history.append({"epoch": epoch + 1, "train_kl": sums["kl"] / sums["n"], "price": price})
    price = _exact_price(logits.detach(), costs, free, actions, settings.target_compute, price)
    path = [actions[k] for k in _deployed(logits.detach(), costs, price, free, actions).tolist()]
    history[-1].update(price=price, compute=path_macs(routed.config, path, tokens)["fraction"])
    if val_rows:
        with torch.no_grad():
            kls = []
            for begin in range(0, len(val_rows), settings.batch_size):
                batch = batch_tensors(val_rows[begin : begin + settings.batch_size], pad_id, routed.device)
                rows_path = torch.tensor([path] * batch["ids"].shape[0])
                kls += _path_kl(routed, batch, teacher_log_probs(routed, batch), rows_path).tolist()
        history[-1]["val_kl"] = sum(kls) / len(kls)
    return path, history


def _path_kl(routed, batch, teacher, decisions: torch.Tensor) -> torch.Tensor:
    hidden = routed.backbone(batch["ids"], batch["attention"], decisions.to(routed.device))
    student = torch.log_softmax(routed.lm_logits(hidden[batch["target"].bool()]).float(), -1)
    return per_row_kl(student, teacher, batch["target"])


def _deployed(logits, costs, price: float, free, actions) -> torch.Tensor:
    """``[L]`` action indices of the argmax path at ``price`` (fixed layers execute)."""
    out = (logits - price * costs).argmax(-1)
    out[~free] = actions.index(EXECUTE)
    return out


def _exact_price(logits, costs, free, actions, target: float, start: float, steps: int = 40) -> float:
    """The least price whose argmax path costs at most ``target`` (cheaper actions win as the price rises)."""
    L = logits.shape[0]

    def compute(price: float) -> float:
        return float(costs[torch.arange(L), _deployed(logits, costs, price, free, actions)].sum()) / L

    low, high = start - 100.0, start + 100.0
    if compute(high) > target:
        raise ValueError(f"even skipping every free layer costs more than {target:.1%} of the full model")
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (low, mid) if compute(mid) <= target else (mid, high)
    return high
