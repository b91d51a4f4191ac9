"""Validation regret: the task score a router's most confident single edit loses against the best one.

Records searched with ``--sweep true`` hold each example's gold margin after every single-layer skip and
every single-layer repeat. From them, per example and edit kind, the gain of an edit at layer ``i`` is the
margin after it minus the base margin. A router's choice is the unprotected layer where it gives the edit
the highest probability; the static choice is the layer with the highest mean gain over the training
split (one layer for every example); the oracle's is the example's own best. Regret is the oracle's gain
minus the chosen one's (lower is better; 0 is the oracle). It measures what macro F1 cannot: whether the
routers' confidence points at edits that help *this* input, in the task's own units. Checkpoints are
selected by it when every record has a sweep; the best epoch's regret is compared, paired, with the
static choice's, and ``metrics.json`` states whether the routers found per-input signal.
"""

from __future__ import annotations

import torch

from drllm.evaluation.stats import paired_difference
from drllm.router import REPEAT, SKIP

EDITS = (("skip", SKIP), ("repeat", REPEAT))


def sweep_gains(rows, num_layers: int) -> torch.Tensor | None:
    """``[N, L, 2]`` gains of every single-layer skip and repeat, or None when a record has no sweep."""
    out = []
    for row in rows:
        info = row.supervision or {}
        sweep, base = info.get("sweep"), info.get("base_margin")
        if not sweep or base is None or any(len(sweep.get(k) or ()) != num_layers for k, _ in EDITS):
            return None
        if any(v is None for k, _ in EDITS for v in sweep[k]):  # a scoring without margins
            return None
        out.append([[sweep["skip"][i] - base, sweep["repeat"][i] - base] for i in range(num_layers)])
    gains = torch.tensor(out, dtype=torch.float32)
    return gains if torch.isfinite(gains).all() else None


def allowed_layers(num_layers: int) -> torch.Tensor:
    """``[L]`` bool: the layers a router may edit (the first two and the last stay protected)."""
    allowed = torch.ones(num_layers, dtype=torch.bool)
    allowed[[0, 1, num_layers - 1] if num_layers > 3 else []] = False
    return allowed


def static_choices(gains: torch.Tensor, train_indices) -> list[int]:
    """Per edit kind, the allowed layer with the highest mean gain over the training rows."""
    allowed = allowed_layers(gains.shape[1])
    mean = gains[torch.as_tensor(train_indices, dtype=torch.long)].mean(0)  # [L, 2]
    return [int(mean[:, k].masked_fill(~allowed, -torch.inf).argmax()) for k in range(len(EDITS))]


def regrets(logits: torch.Tensor, gains: torch.Tensor, static: list[int]) -> dict[str, torch.Tensor]:
    """Per example ``[N]``: ``regret_<edit>`` of the routers and ``regret_static_<edit>`` of ``static``."""
    allowed = allowed_layers(gains.shape[1]).to(gains.device)
    probs = logits.float().softmax(-1)
    out = {}
    for k, (name, decision) in enumerate(EDITS):
        gain = gains[..., k]
        best = gain.masked_fill(~allowed, -torch.inf).max(-1).values
        pick = probs[..., decision].masked_fill(~allowed, -1.0).argmax(-1)
        out[f"regret_{name}"] = best - gain.gather(-1, pick[:, None])[:, 0]
        out[f"regret_static_{name}"] = best - gain[:, static[k]]
    return out


def regret_summary(per_example: dict[str, torch.Tensor], selected: bool = False) -> dict:
    """Mean regrets (``regret``: of both edit kinds) and the verdict on per-input signal, with intervals.

    Signal is claimed when the routers' regret is below the static choice's with the whole 95% paired
    bootstrap interval of the difference below zero. ``selected``: the routers are the epoch of least
    regret on these same examples, so the comparison favours them; the verdict says so.
    """
    mine = (per_example["regret_skip"] + per_example["regret_repeat"]) / 2
    static = (per_example["regret_static_skip"] + per_example["regret_static_repeat"]) / 2
    diff = paired_difference(mine.tolist(), static.tolist())
    out = {k: float(v.mean()) for k, v in per_example.items()}
    out.update(regret=float(mine.mean()), regret_static=float(static.mean()))
    signal = diff.high < 0
    out["per_input_signal"] = bool(signal)
    out["verdict"] = (
        f"validation regret {out['regret']:.3f} against {out['regret_static']:.3f} for the best static edit "
        f"(difference {diff.value:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}], {len(mine)} examples): "
        + ("the routers found per-input signal" if signal else "no per-input signal shown")
        + (" (the epoch was chosen by this regret, which favours the routers)" if selected else "")
    )
    return out
