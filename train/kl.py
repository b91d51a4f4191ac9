"""The dense objective: routers trained to match the base model's next-token distribution at a layer budget.

    rows = build_teacher(routed, tokenizer, task_prompts(["arc_easy", "gsm8k"], tokenizer), "runs/kl/teacher")
    result = fit_kl(routed, rows, KLSettings(kind="static", target_layers=27), start_path)

Per step, for a batch of prompts with their teacher continuations (right-padded, teacher-forced):

- the base model's log-probabilities ``log p`` (all layers, no gradient) at the prompt's last position and
  every continuation position but the last;
- the routed model's ``log q`` at the same positions, the routers deciding each layer on the prompt alone
  (``drllm.router.relaxed``: a hard decision per sequence in the forward pass, straight-through
  Gumbel-softmax gradients, temperature annealed geometrically from ``tau_start`` to ``tau_end``);
- ``loss = KL(p || q) + rho / 2 * (E[layers] - N)^2 + floor * relu(M - E_b[layers])``, where ``E[layers]``
  is the expected layers under the routers' softmax and ``M`` the per-prompt floor;
- the budget: a shift ``b`` added to every skip logit, as ``RoutedModel.budget`` does at inference, moved
  by dual ascent on the layers the argmax decisions run (``b += dual_lr * (layers - N)``). The KL gradient
  only has to order the layers; the shift keeps the deployed mean at N, and is folded into the skip bias
  at the end.

Routers start from a static path (the best heuristic at that level): every trainable head outputs
``start_margin`` on the start path's decision and ``-start_margin`` on the others, its input weights at
zero, so training begins on a deployable path. Protected layers (the first two and the last) always run.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from drllm.router import SKIP, Relaxation, relaxed
from drllm.search.closeness import batch_tensors, teacher_log_probs

from .gold_loss import gold_rows, step_with_gold
from .kl_validation import evaluate_kl, executed_share, relaxed_step  # noqa: F401 - importable here

KL_KINDS = ("static", "linear", "mlp")
ESTIMATORS = ("score-function", "straight-through")
BASELINES = ("running-mean", "per-prompt")
BUDGETS = ("shift", "price")


@dataclass
class KLSettings:
    """Everything that decides a KL training run (all of it is the run's identity)."""

    kind: str = "static"
    target_layers: float = 0.0
    min_layers: float = 0.0
    epochs: int = 2
    batch_size: int = 8
    lr: float = 0.05
    weight_decay: float = 0.0
    tau_start: float = 1.0
    tau_end: float = 0.1
    dual_lr: float = 0.1
    rho: float = 0.0
    floor_weight: float = 1.0
    start_margin: float = 2.0
    gold_weight: float = 0.0
    """Weight of the task loss added to each prompt's KL where the prompt has answer options: the
    cross-entropy of its gold option among the options' summed log-likelihoods (``drllm.train.gold_loss``)."""
    protected: tuple[int, ...] = (0, 1, -1)
    seed: int = 0
    estimator: str = "score-function"
    """``score-function`` (REINFORCE: the KL of each sampled path is its reward, no gradient through the
    model) or ``straight-through`` (Gumbel-softmax gradients through the model; measured on SmolLM2 to drift
    from its start: near the base model the KL is flat to first order)."""
    budget: str = "shift"
    """How training holds the level: ``shift`` (a shift of every skip logit moved by dual ascent; the routers'
    own logits are free to drift toward executing, the shift chasing them) or ``price`` (a price per layer
    moved by dual ascent and added to each sampled path's cost, so the estimator itself trades KL against
    layers; score-function only). Either way the deployed shift is calibrated exactly at the end, folded."""
    baseline: str = "running-mean"
    """The score-function estimator's baseline: ``running-mean`` (of the batches' costs) or ``per-prompt``
    (the cost of the deployed argmax path on the same prompt: a sampled path is rewarded exactly for beating
    what would deploy; one extra forward, run only on the rows whose sample left the argmax path)."""

    def check(self) -> None:
        """Refuse a setting that cannot train, naming it."""
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {self.budget!r}")
        for name, default in (("baseline", "running-mean"), ("budget", "shift")):
            if getattr(self, name) != default and self.estimator != "score-function":
                raise ValueError(f"{name} {getattr(self, name)!r} is for the score-function estimator")

    def identity(self) -> dict:
        """The settings as JSON-ready values.

        ``baseline`` and ``budget`` are left out at their defaults: runs saved before they existed resume.
        """
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
        for name, default in (("baseline", "running-mean"), ("budget", "shift")):
            if out[name] == default:
                del out[name]
        return out


def protected_layers(num_layers: int, protected) -> list[int]:
    """Protected layer indices counted from 0 (negative ones from the end), sorted and distinct."""
    out = set()
    for p in protected:
        if not -num_layers <= p < num_layers:
            raise ValueError(f"protected layer {p} does not exist in a {num_layers}-layer model")
        out.add(p % num_layers)
    return sorted(out)


def start_routers(routers, path, margin: float) -> None:
    """Make every head output ``margin`` on ``path[i]`` and ``-margin`` elsewhere, whatever its input."""
    target = torch.full((len(path), routers.config.actions), -float(margin))
    target[torch.arange(len(path)), torch.tensor(list(path))] = float(margin)
    kind = routers.config.kind
    with torch.no_grad():
        if kind == "static":
            routers.static.logits.copy_(target)
            return
        for i, head in enumerate(routers.layers):
            last = head.proj if kind == "linear" else head.net[2]
            last.weight.zero_()
            last.bias.copy_(target[i])


def path_cost(routed, relaxation_for, chunk: list[dict], teacher, pad_id: int, gold):
    """Per-row KL ``[B]`` and option cross-entropy ``[B]`` (0 without options) of one routed forward.

    ``relaxation_for(groups)`` builds the forward's ``Relaxation`` (``groups``: the option rows' ties, or
    None). Returns ``(kl, ce, relaxation, extra)``, ``extra`` the option rows (``GoldRows``) or None.
    """
    extra = gold_rows(chunk, gold) if gold else None
    relaxation = relaxation_for(groups=None if extra is None else extra.groups)
    if extra is not None:
        kl, ce, _ = step_with_gold(routed, relaxation, chunk, extra, teacher, pad_id)
        return kl, ce, relaxation, extra
    kl = relaxed_step(routed, relaxation, batch_tensors(chunk, pad_id, routed.device), teacher)
    return kl, torch.zeros_like(kl), relaxation, None


@torch.no_grad()
def deployed_cost(
    routed,
    sampled: Relaxation,
    relaxation_for,
    chunk,
    teacher,
    pad_id,
    gold,
    cost,
    weight,
    price: float = 0.0,
):
    """Per-row cost ``[B]`` (KL + ``weight`` x option cross-entropy + ``price`` x layers), deployed path.

    The per-prompt baseline. Rows whose sampled path took the argmax at every layer ran the deployed path
    already (the same decisions on the same states, layer by layer): their cost is ``cost``, the sampled
    one. The others run once more, without sampling.
    """
    reference = cost.detach().clone()
    left = sampled.deviated()[: len(chunk)].nonzero()[:, 0].tolist()
    if left:
        rows = [chunk[b] for b in left]
        sub = teacher_rows(teacher, [len(r["continuation"]) for r in chunk], left)
        deployed = functools.partial(relaxation_for, sample=False)
        kl, ce, relaxation, _ = path_cost(routed, deployed, rows, sub, pad_id, gold)
        layers = relaxation.layers()[: len(rows)].to(kl)
        reference[left] = (kl + weight * ce + price * layers).to(reference)
    return reference


def teacher_rows(teacher: torch.Tensor, lengths: list[int], rows: list[int]) -> torch.Tensor:
    """The teacher's log-probabilities ``[N, V]`` (row-major) of the batch rows ``rows`` only."""
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    return torch.cat([teacher[offsets[b] : offsets[b + 1]] for b in rows])


def fit_kl(
    routed,
    rows: list[dict],
    val_rows: list[dict],
    settings: KLSettings,
    pad_id: int,
    state: dict | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    gold: dict[str, dict] | None = None,
) -> list[dict]:
    """Train ``routed.routers`` (already attached and started) on ``rows``; the per-epoch history.

    The budget is held by a shift of every skip logit (the same knob as ``RoutedModel.budget``), moved
    after each step by ``dual_lr`` times the deployed layers' excess over the target, so the argmax path
    runs N layers on average while the KL gradient orders the layers; at the end the shift is folded into
    the routers' skip bias, so they deploy at N with budget 0. ``state`` resumes a run: ``{"epoch",
    "shift", "history", "optimizer", "routers"}`` as ``on_epoch`` was handed it after each epoch (save it: a
    kill then loses at most one epoch). ``gold`` (``drllm.search.gold.gold_options``) gives the answer
    options ``settings.gold_weight`` scores.
    """
    settings.check()
    routers = routed.routers
    fixed = protected_layers(routed.num_layers, settings.protected)
    routers.set_default_path(None, None, protected=fixed)  # deployed, they execute whatever the logits say
    params = [p for p in routers.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    shift, price, first_epoch, history = 0.0, 0.0, 0, []
    if state is not None:
        routers.load_state_dict(state["routers"])
        optimizer.load_state_dict(state["optimizer"])
        shift, first_epoch, history = state["shift"], state["epoch"], state["history"]
        price = state.get("price", 0.0)
    steps_per_epoch = math.ceil(len(rows) / settings.batch_size)
    total = max(1, settings.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(settings.seed)
    baseline = None  # the running mean cost of the score-function estimator
    gold = gold if settings.gold_weight and gold else None
    for epoch in range(first_epoch, settings.epochs):
        order = list(range(len(rows)))
        random.Random(settings.seed * 1000 + epoch).shuffle(order)
        generator.manual_seed(settings.seed * 1000 + epoch)
        sums = {"kl": 0.0, "layers": 0.0, "n": 0, "gold_ce": 0.0, "gold_n": 0}
        bar = tqdm(range(steps_per_epoch), desc=f"kl epoch {epoch + 1}/{settings.epochs}", leave=False)
        for step in bar:
            chunk = [rows[i] for i in order[step * settings.batch_size : (step + 1) * settings.batch_size]]
            batch = batch_tensors(chunk, pad_id, routed.device)
            teacher = teacher_log_probs(routed, batch)
            progress = (epoch * steps_per_epoch + step) / total
            tau = settings.tau_start * (settings.tau_end / settings.tau_start) ** progress
            score = settings.estimator == "score-function"

            relaxation_for = functools.partial(  # groups=..., and sample=False for the deployed path
                Relaxation,
                routers,
                tau=tau,
                fixed=fixed,
                generator=generator,
                budget=shift,
                straight_through=not score,
            )
            kl, ce, relaxation, extra = path_cost(routed, relaxation_for, chunk, teacher, pad_id, gold)
            if extra is not None:
                sums["gold_ce"] += float(ce.detach().sum())
                sums["gold_n"] += int((extra.gold >= 0).sum())
            B = len(chunk)
            cost = kl + settings.gold_weight * ce + price * relaxation.layers()[:B].detach().to(kl)
            if score:  # no gradient through the frozen model: each sampled path's cost is its reward
                cost = cost.detach()
                if settings.baseline == "per-prompt":
                    weight = settings.gold_weight
                    reference = deployed_cost(
                        routed, relaxation, relaxation_for, chunk, teacher, pad_id, gold, cost, weight, price
                    )
                    advantage = cost - reference  # [B], 0 where the sample is the deployed path
                else:
                    baseline = cost.mean() if baseline is None else 0.9 * baseline + 0.1 * cost.mean()
                    advantage = cost - baseline  # [B], a lower cost than usual is rewarded
                objective = (advantage * relaxation.path_log_prob()[:B]).mean()
            else:
                objective = cost.mean()
            expected = relaxation.expected_layers()[:B]
            gap = expected.mean() - settings.target_layers
            floor = F.relu(settings.min_layers - expected).mean()
            loss = objective + settings.rho / 2 * gap**2 + settings.floor_weight * floor
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            deployed = relaxation.deployed_layers()[:B]  # the argmax path under the shift: what deploys
            excess = float(deployed.mean()) - settings.target_layers
            if settings.budget == "price":  # the price per layer rises while the deployed path runs too many
                price += settings.dual_lr * excess
            else:
                shift += settings.dual_lr * excess
            sums["kl"] += float(kl.detach().sum())
            sums["layers"] += float(deployed.sum())
            sums["n"] += len(chunk)
            bar.set_postfix(kl=f"{sums['kl'] / sums['n']:.3f}", layers=f"{sums['layers'] / sums['n']:.2f}")
        bar.close()
        record = {"epoch": epoch + 1, "train_kl": sums["kl"] / max(1, sums["n"]), "skip_shift": shift}
        record |= {"layer_price": price} if settings.budget == "price" else {}
        record["train_layers"] = sums["layers"] / max(1, sums["n"])
        if sums["gold_n"]:
            record["train_gold_ce"] = sums["gold_ce"] / sums["gold_n"]
        if val_rows:
            record.update(evaluate_kl(routed, val_rows, settings.batch_size, pad_id, fixed, shift, gold))
        history.append(record)
        state = {
            "epoch": epoch + 1,
            "shift": shift,
            "price": price,
            "history": history,
            "optimizer": optimizer.state_dict(),
            "routers": {k: v.detach().clone() for k, v in routers.state_dict().items()},
        }
        if on_epoch is not None:
            on_epoch(state)
    if rows:  # the shift moved in steps; the deployed one is set exactly, on training prompts
        shift = calibrate_shift(routed, rows[: 4 * settings.batch_size], settings, pad_id, fixed, shift)
        history[-1]["deployed_shift"] = shift
        if val_rows:  # what deploys: validated at the calibrated shift
            history[-1].update(evaluate_kl(routed, val_rows, settings.batch_size, pad_id, fixed, shift, gold))
    fold_shift(routers, shift, routed._state.unit_costs)
    return history


@torch.no_grad()
def calibrate_shift(routed, rows, settings: KLSettings, pad_id: int, fixed, start: float, steps: int = 14):
    """The skip shift whose argmax decisions run ``target_layers`` on ``rows`` on average.

    Two bisections find where the mean falls to N and where it falls below N; the middle of that interval
    is robust to rounding (a static path's count is a step function of the shift). With sublayer units the
    counts are compute and rarely hit N exactly: N is then a ceiling, the deployed mean the largest below it.
    """

    def layers_at(shift: float) -> float:
        total = 0.0
        for begin in range(0, len(rows), settings.batch_size):
            batch = batch_tensors(rows[begin : begin + settings.batch_size], pad_id, routed.device)
            relaxation = Relaxation(
                routed.routers, fixed=fixed, sample=False, budget=shift, straight_through=False
            )
            with relaxed(routed, relaxation):
                routed.backbone(batch["ids"], batch["attention"], route_mask=batch["prompt"])
            total += float(relaxation.deployed_layers().sum())
        return total / len(rows)

    def first_shift(holds) -> float:  # the least shift at which holds(layers) is true (layers fall with it)
        low, high = start - 20.0, start + 20.0
        for _ in range(steps):
            mid = (low + high) / 2
            low, high = (low, mid) if holds(layers_at(mid)) else (mid, high)
        return high

    target = settings.target_layers
    at_most = first_shift(lambda layers: layers <= target)  # from here on, no more than N layers
    below = first_shift(lambda layers: layers < target)  # from here on, fewer than N
    return (at_most + below) / 2 if below > at_most else at_most  # the middle of the interval at N


def fold_shift(routers, shift: float, unit_costs: tuple[float, float] | None = None) -> None:
    """Add ``shift`` to every head's skip logit (its bias), so the routers deploy at budget 0 as trained.

    With sublayer actions, each unit's logit gets the shift times the share of the block it saves.
    """
    add = torch.zeros(routers.config.actions)
    add[SKIP] = shift
    if routers.config.actions == 5:
        if unit_costs is None:
            raise ValueError("routers with 5 actions fold the shift with the model's unit_costs")
        add[3:] = torch.tensor([shift * (1.0 - unit_costs[0]), shift * (1.0 - unit_costs[1])])
    with torch.no_grad():
        if routers.config.kind == "static":
            routers.static.logits += add.to(routers.static.logits)
            return
        for head in routers.layers:
            last = head.proj if routers.config.kind == "linear" else head.net[2]
            last.bias += add.to(last.bias)
