"""Static baselines at the level of sublayer units: which attentions and MLPs can a path lose?

``unit_influence`` measures, on calibration prompts, the influence of each layer's attention and MLP on
the residual stream, LLM-Drop's criterion (arXiv 2406.15786) applied to each unit: ``1 - cos(x, y)``
averaged over real tokens (each prompt's first token left out, as for block influence). For attention,
``x`` enters the layer and ``y`` is the state after its attention (the layer run with its MLP switched
off); for the MLP, ``x`` is that state and ``y`` the layer's output. The layer is re-run on its recorded
input with the same arguments, so this holds for every architecture, with pre- or post-norms and parallel
residuals alike (for gpt_neox's parallel residual the two units read the same input; the split is still
exact for the sum).

``unit_drop_path`` then drops units by least influence per multiply-add until a compute target is met:
a path of decisions 3 (attention dropped) and 4 (MLP dropped), 0 when both go. ``attention_drop_path``
drops only attentions (LLM-Drop's attention drop), ``mlp_drop_path`` only MLPs (its MLP drop). Protected
layers keep both units.
"""

from __future__ import annotations

from functools import partial

import torch
from torch.nn import functional as F

from drllm.router import all_execute, batch_prompts, block_macs, layer_list
from drllm.router.decisions import ATTENTION_ONLY, MLP_ONLY
from drllm.router.units import units_off


@torch.no_grad()
def unit_influence(routed, tokenizer, prompts: list[str], batch_size: int = 16) -> dict[str, torch.Tensor]:
    """``{"attention": [L], "mlp": [L]}``: mean ``1 - cos`` of each unit's input and output (see above)."""
    if not prompts:
        raise ValueError("unit influence needs calibration prompts, got none")
    L = routed.num_layers
    layers = layer_list(routed.model)
    sums = {"attention": torch.zeros(L, dtype=torch.float64), "mlp": torch.zeros(L, dtype=torch.float64)}
    tokens = 0
    for start in range(0, len(prompts), batch_size):
        ids, mask = batch_prompts(tokenizer, prompts[start : start + batch_size], routed.device)
        calls: dict = {}
        handles = [
            layer.register_forward_pre_hook(partial(_keep_call, calls), with_kwargs=True) for layer in layers
        ]
        try:
            with routed.recording() as states:
                routed.backbone(ids, mask, all_execute(L))
        finally:
            for handle in handles:
                handle.remove()
        keep = mask.bool() & (mask.cumsum(1) > 1)
        tokens += int(keep.sum())
        for i, layer in enumerate(layers):
            args, kwargs = calls[i]
            with units_off(layer.layer, {"mlp": True}):
                middle = layer.layer(*args, **kwargs)
            middle = middle[0] if isinstance(middle, tuple) else middle
            for unit, x, y in (("attention", states[i], middle), ("mlp", middle, states[i + 1])):
                cos = F.cosine_similarity(x.float(), y.float(), dim=-1)
                sums[unit][i] += float((1.0 - cos)[keep].sum())
    if tokens == 0:
        raise ValueError("unit influence needs prompts of 2 or more tokens (each prompt's first is left out)")
    return {unit: (v / tokens).float() for unit, v in sums.items()}


def _keep_call(calls: dict, module, args, kwargs) -> None:
    """Forward pre-hook: the arguments layer ``module`` was called with, to run it again."""
    calls[module.routed_index] = (args, kwargs)


def _unit_costs(config, num_layers: int, prompt_tokens: int) -> dict[tuple[str, int], float]:
    costs = {}
    for i in range(num_layers):
        part = block_macs(config, i, prompt_tokens)
        costs[("attention", i)] = part["attention_projections"] + part["attention_context"]
        costs[("mlp", i)] = part["mlp"]
    return costs


def unit_drop_path(
    influence: dict[str, torch.Tensor],
    config,
    saved_fraction: float,
    prompt_tokens: int,
    protected: tuple[int, ...] = (0, 1, -1),
    units: tuple[str, ...] = ("attention", "mlp"),
) -> list[int]:
    """Drop the units of least influence per multiply-add until ``saved_fraction`` of the stack is saved.

    Raises:
        ValueError: when the unprotected units cannot save that much.
    """
    L = len(influence["attention"])
    if not 0 <= saved_fraction < 1:
        raise ValueError(f"saved_fraction must lie in [0, 1), got {saved_fraction!r}")
    fixed = {p % L for p in protected}
    costs = _unit_costs(config, L, prompt_tokens)
    full = sum(costs.values())
    free = [(u, i) for u in units for i in range(L) if i not in fixed]
    order = sorted(free, key=lambda k: (float(influence[k[0]][k[1]]) / costs[k], k[1]))
    dropped, saved = set(), 0.0
    for key in order:
        if saved >= saved_fraction * full:
            break
        dropped.add(key)
        saved += costs[key]
    if saved < saved_fraction * full:
        raise ValueError(
            f"dropping every unprotected unit ({', '.join(units)}) saves {saved / full:.1%}, "
            f"less than {saved_fraction:.1%}"
        )
    path = []
    for i in range(L):
        a, m = ("attention", i) in dropped, ("mlp", i) in dropped
        path.append(0 if a and m else MLP_ONLY if a else ATTENTION_ONLY if m else 1)
    return path


def attention_drop_path(influence, config, saved_fraction: float, prompt_tokens: int, protected=(0, 1, -1)):
    """LLM-Drop's attention drop: only attention units, least influence per multiply-add first."""
    return unit_drop_path(influence, config, saved_fraction, prompt_tokens, protected, units=("attention",))


def mlp_drop_path(influence, config, saved_fraction: float, prompt_tokens: int, protected=(0, 1, -1)):
    """LLM-Drop's MLP drop: only MLP units, least influence per multiply-add first."""
    return unit_drop_path(influence, config, saved_fraction, prompt_tokens, protected, units=("mlp",))
