"""Fitting stand-ins in closed form on calibration prompts: linear maps for skips, scales for repeats.

**Linear maps** (``fit_linear_stand_ins``). For a static path, the skipped layers are fitted in order. For
skipped layer ``i`` the input ``x`` is the state entering layer ``i`` along the path itself, with the
stand-ins already fitted for earlier layers in place, and the target ``y`` is the state the full model
has after layer ``i``. The map is the ridge least-squares solution of ``y - x ~ [x, 1] W`` over every real
token of the calibration prompts, each prompt's first token included: its hidden state (the attention
sink) is orders of magnitude larger than the others, and a map fitted without it sends it far off at
inference (on SmolLM2 at 27 layers, leaving it out raised the KL to the base model above a plain skip's,
while keeping it halved that KL). Because the
target is the full model's state, a map also corrects what earlier skips lost. The maps are fitted in
float64 from sums accumulated batch by batch (``X^T X``, ``X^T Y``); the full model runs once, and its
states leaving the skipped layers are kept in host memory (calibration tokens x d per skipped layer).

Without a path (``path=None``), every layer but the protected ones gets a map fitted on the full model's
own states (``x`` entering layer ``i``, ``y`` leaving it). Such maps serve routers, whose paths differ per
prompt.

Rank ``r`` is reduced-rank regression: the full solution ``W`` is projected onto the top ``r`` principal
directions of its fitted updates ``[x, 1] W``. Those directions are the eigenvectors of
``W^T (X^T X) W``.

**Damped repeats** (``fit_repeat_scales``). For each repeated layer of a path, in order, the scale is
chosen from a grid by the language-model loss (next-token NLL) on the calibration prompts. A repeat has no
counterpart in the full model, so closeness to it would always choose 0. 1 is the plain repeat.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from drllm.router import all_execute, batch_prompts, check_decisions
from drllm.router.stand_ins import StandIns

from . import progress

SCALE_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def _batches(tokenizer, prompts: list[str], batch_size: int, device):
    if not prompts:
        raise ValueError("fitting stand-ins needs calibration prompts, got none")
    for start in range(0, len(prompts), batch_size):
        yield batch_prompts(tokenizer, prompts[start : start + batch_size], device)


def _states(routed, ids, mask, decisions) -> list[torch.Tensor]:
    with routed.recording() as states:
        routed.backbone(ids, mask, decisions)
    return list(states)


def _solve(xtx: torch.Tensor, xty: torch.Tensor, ridge: float, rank: int | None):
    """``(down, bias, up)`` solving ``[x, 1] W = target`` (ridge) from the sums of ``_accumulate``.

    Low rank by reduced-rank regression.
    """
    n = xtx.shape[0]
    lam = ridge * float(torch.diagonal(xtx).mean())
    w = torch.linalg.solve(xtx + lam * torch.eye(n, dtype=xtx.dtype), xty)  # [d + 1, d]
    if rank is None:
        return w[:-1].float(), w[-1].float(), None
    fitted = w.T @ xtx @ w  # [d, d]: covariance of the fitted updates
    _, vectors = torch.linalg.eigh((fitted + fitted.T) / 2)
    v = vectors[:, -rank:]  # [d, r], top r
    return (w[:-1] @ v).float(), (w[-1] @ v @ v.T).float(), v.T.contiguous().float()


def _accumulate(sums: dict, i, x: torch.Tensor, y: torch.Tensor, residual: bool = True) -> None:
    """Add one batch's kept tokens (``x``, ``y`` ``[N, d]``) to the sums of ``i`` (a layer, or any key).

    The target is ``y - x`` (a layer's update) with ``residual``, else ``y`` itself.
    """
    xs = x.double()
    xs = torch.cat([xs, torch.ones(xs.shape[0], 1, dtype=xs.dtype, device=xs.device)], 1)
    delta = y.to(x.device).double() - x.double() if residual else y.to(x.device).double()
    xtx, xty = (xs.T @ xs).cpu(), (xs.T @ delta).cpu()
    if i in sums:
        sums[i][0].add_(xtx)
        sums[i][1].add_(xty)
    else:
        sums[i] = [xtx, xty]


def _kept(mask: torch.Tensor, skip_first: bool) -> torch.Tensor:
    keep = mask.bool()
    return keep & (mask.cumsum(1) > 1) if skip_first else keep


@torch.no_grad()
def fit_linear_stand_ins(
    routed,
    tokenizer,
    prompts: list[str],
    path=None,
    rank: int | None = None,
    ridge: float = 1e-3,
    protected: tuple[int, ...] = (),
    skip_first: bool = False,
    batch_size: int = 16,
    stand_ins: StandIns | None = None,
) -> StandIns:
    """Linear stand-ins for the skipped layers of ``path`` (or for every layer; see the module docstring).

    Args:
        routed: a ``RoutedModel``; its routers are not used, its own stand-ins are set aside meanwhile.
        tokenizer: its tokenizer (prompts are encoded as everywhere in drllm and left-padded).
        prompts: calibration prompts (a training split; never the evaluated examples).
        path: one decision per layer (sublayer units 3 and 4 too: they run, with the unit maps of
            ``stand_ins`` if given); None: a map for every layer outside ``protected``.
        rank: None for full-rank maps, else the rank of each map (``1 .. d - 1``).
        ridge: ridge strength, relative to the mean diagonal of ``X^T X``.
        protected: layers that get no map (only with ``path=None``).
        skip_first: leave each prompt's first token (the attention sink) out of the fit (not advised).
        batch_size: prompts per forward.
        stand_ins: add the maps to these (their repeat scales are kept); default: new ones.

    Returns:
        The stand-ins (not attached), recording ``fitted_on`` (path, prompts, tokens, rank, ridge).
    """
    if not 0 <= ridge < float("inf"):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    L = routed.num_layers
    if any(not -L <= p < L for p in protected):
        raise ValueError(f"protected layers must lie in -{L}..{L - 1}, got {list(protected)}")
    full = all_execute(L)
    plan = None if path is None else check_decisions(path, L, units=True)[0].tolist()
    if plan is None:
        layers = [i for i in range(L) if i not in {p % L for p in protected}]
    else:
        layers = [i for i, d in enumerate(plan) if d == 0]
    out = stand_ins if stand_ins is not None else routed.new_stand_ins(rank)
    before = routed.stand_ins
    tokens = 0
    try:
        if plan is None:  # every layer at once, from the full model's own states
            sums: dict = {}
            for ids, mask in _batches(tokenizer, prompts, batch_size, routed.device):
                states, keep = _states(routed, ids, mask, full), _kept(mask, skip_first)
                tokens += int(keep.sum())
                for i in layers:
                    _accumulate(sums, i, states[i][keep], states[i + 1][keep])
            for i in layers:
                out.set_map(i, *_solve(*sums[i], ridge, out.rank))
        else:  # skipped layers in order, along the path with the earlier maps in place
            batches = list(_batches(tokenizer, prompts, batch_size, routed.device))
            targets = []  # per batch, the full model's kept states leaving each skipped layer (host memory)
            for ids, mask in batches:
                states, keep = _states(routed, ids, mask, full), _kept(mask, skip_first)
                tokens += int(keep.sum())
                targets.append({i: states[i + 1][keep].cpu() for i in layers})
            routed.set_stand_ins(out)
            decisions = torch.tensor(plan)
            bar = progress.bar(len(layers), desc="stand-ins", unit="layer")
            for i in layers:
                sums = {}
                for (ids, mask), target in zip(batches, targets, strict=True):
                    along = _states(routed, ids, mask, decisions)[i][_kept(mask, skip_first)]
                    _accumulate(sums, i, along, target[i])
                out.set_map(i, *_solve(*sums[i], ridge, out.rank))
                bar.update()
            bar.close()
    finally:
        routed.set_stand_ins(before)
    if tokens <= routed.hidden_size:
        raise ValueError(
            f"{tokens} calibration tokens for maps of {routed.hidden_size} inputs: give more prompts"
        )
    out.info["fitted_on"] = {
        "path": plan,
        "layers": layers,
        "prompts": len(prompts),
        "tokens": tokens,
        "ridge": ridge,
        "skip_first": skip_first,
    }
    return out


@torch.no_grad()
def _lm_loss(routed, tokenizer, prompts: list[str], decisions, batch_size: int) -> float:
    total, count = 0.0, 0
    for ids, mask in _batches(tokenizer, prompts, batch_size, routed.device):
        logits = routed.lm_logits(routed.backbone(ids, mask, decisions))[:, :-1].float()
        keep = (mask[:, :-1] * mask[:, 1:]).bool()
        nll = F.cross_entropy(logits[keep], ids[:, 1:][keep], reduction="sum")
        total, count = total + float(nll), count + int(keep.sum())
    return total / max(count, 1)


@torch.no_grad()
def fit_repeat_scales(
    routed, tokenizer, prompts: list[str], path, grid=SCALE_GRID, batch_size: int = 16, stand_ins=None
) -> StandIns:
    """Damped repeats: per repeated layer of ``path``, the grid scale with the lowest LM loss on ``prompts``.

    Returns the stand-ins (``stand_ins`` or new ones) with ``repeat_scale`` set and, in
    ``info["repeat_fit"]``, every layer's loss at every grid value.
    """
    if not grid or any(not 0 <= a <= 1 for a in grid):
        raise ValueError(f"repeat scales must lie in [0, 1], got {list(grid)}")
    L = routed.num_layers
    plan = check_decisions(path, L)[0]
    out = stand_ins if stand_ins is not None else routed.new_stand_ins()
    before, losses = routed.stand_ins, {}
    routed.set_stand_ins(out)
    try:
        for i in (plan == 2).nonzero().flatten().tolist():
            tried = {}
            for alpha in grid:
                out.repeat_scale[i] = alpha
                tried[alpha] = _lm_loss(routed, tokenizer, prompts, plan, batch_size)
            out.repeat_scale[i] = min(tried, key=tried.get)
            losses[i] = tried
    finally:
        routed.set_stand_ins(before)
    out.info["repeat_fit"] = {"prompts": len(prompts), "lm_loss": {str(i): v for i, v in losses.items()}}
    return out
