"""``RoutedLayer``: a decoder layer that is skipped, executed once or executed twice per row.

All routed layers of one model share a ``RoutingState`` that holds the decisions ``[B, L]`` of the current
call. Decisions are fixed per sequence: given by the caller, or made by the routers layer by layer during
the first (prefill) forward of a call and reused for every later forward (decode steps) of that call.

Rows of a batch may differ. Without a KV cache a layer runs only on the rows that execute it (rows and
batch-shaped arguments are gathered, results scattered back). With a cache the full batch runs and each
row keeps what its decision asks for, so the cache stays batch-shaped. A repeat's second pass writes the
cache slot ``L + i`` (see ``cache.RoutedCache``).

``layer_input`` and ``put_rows`` serve the forward pre-hooks that ``RoutedModel.recording`` and
``RoutedModel.starting_at`` install on routed layers; the layer itself knows nothing of them.
"""

from __future__ import annotations

import math
import warnings
from functools import partial

import torch
from torch import nn
from transformers.cache_utils import Cache

from .cache import RoutedCache
from .decisions import EXECUTE, REPEAT, SKIP, UNIT_OFF
from .relaxed import run_relaxed
from .unit_stand_ins import UNITS
from .units import units_off

# transformers >= 5.24 passes the cache to decoder layers as ``cache``; older releases as ``past_key_values``
_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


class RoutingState:
    """What the routed layers of one model share during a call (set by ``RoutedModel``, never by hand)."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.active = False
        self.routers: nn.Module | None = None
        self.budget = 0.0
        self.unit_costs: tuple[float, float] | None = None  # routers with 5 actions: (MLP, attention) shares
        self.relaxation = None  # a ``relaxed.Relaxation`` while gradient training runs (``relaxed.relaxed``)
        self.stand_ins = None  # a ``stand_ins.StandIns``: what skips and repeats run in place of plain ones
        self.reset()

    def reset(self) -> None:
        """Forget the current call's decisions and options."""
        self._decisions: torch.Tensor | None = None  # [B, L]; -1 where the routers have not decided yet
        self._routed: list[list[int]] | None = None  # rows x L, the routers' choices, on the host
        self._device = None
        self.plan: list[int | None] = [EXECUTE] * self.num_layers  # per layer: the value every row shares
        self.pending: list[bool] = [False] * self.num_layers  # layers the routers still have to decide
        self.pad_mask: torch.Tensor | None = None
        self.warned_nonfinite = False
        self.pool_weights = None  # window pooling weights of the prompt, shared by every router

    @property
    def decisions(self) -> torch.Tensor | None:
        """Decisions ``[B, L]`` of this call (-1 for layers the routers have not reached yet)."""
        if self._routed is not None:  # the routers' choices live on the host until someone needs a tensor
            self._decisions = torch.tensor(self._routed, dtype=torch.long, device=self._device)
            self._routed = None if not any(self.pending) else self._routed
        return self._decisions

    def set_decisions(self, decisions: torch.Tensor) -> None:
        """Fix the decisions ``[B, L]`` for the rest of the call."""
        self._decisions, self._routed = decisions, None
        self.pending = [False] * self.num_layers
        self.plan = [_uniform(col) for col in decisions.t().cpu().tolist()]

    def begin_routing(self, batch_size: int, pad_mask: torch.Tensor | None, device) -> None:
        """Let the routers decide every layer at the next forward (prefill)."""
        self._decisions, self._device = None, device
        self._routed = [[-1] * self.num_layers for _ in range(batch_size)]
        self.pending = [True] * self.num_layers
        self.plan = [None] * self.num_layers
        self.pad_mask = pad_mask

    def decide(self, index: int, hidden: torch.Tensor) -> torch.Tensor | None:
        """Decide layer ``index`` (asking its router at prefill); per-row decisions ``[B]`` if rows differ.

        Returns None when every row shares one decision: ``plan[index]`` then holds it.
        """
        if self.pending[index]:
            self._route(index, hidden)
        if self.plan[index] is not None:
            return None
        return _match_batch(self.decisions[:, index], hidden.shape[0])

    def _route(self, index: int, hidden: torch.Tensor) -> None:
        mask = None if self.pad_mask is None else _match_batch(self.pad_mask, hidden.shape[0])
        if mask is not None and mask.shape[1] != hidden.shape[1]:
            raise ValueError(f"attention_mask has {mask.shape[1]} positions, the prompt {hidden.shape[1]}")
        read = self.routers.config.read_layer
        if read is not None and index < read:  # decided before the routers read anything: the default
            self._store(index, [self._choose(index, None)] * len(self._routed))
            return
        if self.pool_weights is None or self.pool_weights[0].shape[0] != hidden.shape[0]:
            self.pool_weights = self.routers.pool_weights(
                mask, hidden.shape[0], hidden.shape[1], hidden.device
            )
        step = hidden.shape[0] // len(self._routed)  # generate may have expanded rows (beams)
        if read is None:
            logits = self.routers(index, hidden, mask, self.pool_weights).tolist()  # [B, 3]: one sync a layer
            self._store(index, [self._choose(index, row) for row in logits[::step]])
            return
        logits = self.routers.forward_all(hidden, mask, self.pool_weights)[::step].tolist()  # [B, L, 3]
        for layer in range(index, self.num_layers):  # every remaining layer, from one router call
            self._store(layer, [self._choose(layer, row[layer]) for row in logits])

    def _store(self, index: int, choices: list[int]) -> None:
        """Record layer ``index``'s decision for each sequence (one per sequence, in order)."""
        for row, choice in zip(self._routed, choices, strict=True):
            row[index] = choice
        self.pending[index] = False
        self.plan[index] = _uniform(choices)

    def _choose(self, index: int, logits: list[float] | None) -> int:
        """Argmax with the budget added to the skip logit, or a deviation from the default path.

        The budget prices a layer's compute: skip earns all of it, a sublayer unit the share it saves.

        With a default path, the argmax replaces the default only where it beats it by more than the
        threshold in probability; protected layers (and ``logits=None``: no router read) keep the default.
        A non-finite logit keeps the default (and warns once).
        """
        config = self.routers.config
        default = config.default_path[index] if config.default_path else EXECUTE
        if logits is None or index in config.protected:
            return default
        if not all(math.isfinite(v) for v in logits):
            if not self.warned_nonfinite:
                warnings.warn(
                    f"router {index} produced a non-finite logit; keeping the default decision for those "
                    "rows",
                    stacklevel=4,
                )
                self.warned_nonfinite = True
            return default
        shifted = list(logits)  # skip, execute, repeat (, MLP alone, attention alone)
        shifted[SKIP] += self.budget
        if len(shifted) == 5 and self.unit_costs is not None:  # a unit earns the budget for what it saves
            shifted[3] += self.budget * (1.0 - self.unit_costs[0])
            shifted[4] += self.budget * (1.0 - self.unit_costs[1])
        best = max(range(len(shifted)), key=shifted.__getitem__)
        if not config.default_path or config.threshold is None or best == default:
            return best
        top = max(shifted)
        weights = [math.exp(v - top) for v in shifted]
        gap = (weights[best] - weights[default]) / sum(weights)
        return best if gap > config.threshold else default


def _uniform(values: list[int]) -> int | None:
    first = values[0]
    return first if all(v == first for v in values) else None


def _match_batch(t: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Expand per-sequence tensors to a batch expanded by generate (beams, num_return_sequences)."""
    if t.shape[0] == batch_size:
        return t
    if batch_size % t.shape[0]:
        raise ValueError(
            f"the model runs {batch_size} rows but decisions were made for {t.shape[0]} sequences"
        )
    return t.repeat_interleave(batch_size // t.shape[0], dim=0)


class RoutedLayer(nn.Module):
    """Wraps decoder layer ``index``; reads its decision from the shared ``RoutingState``."""

    def __init__(self, layer: nn.Module, index: int, state: RoutingState):
        super().__init__()
        self.layer = layer
        self.routed_index = index
        self.__dict__["state"] = state  # shared, not a submodule
        self._tuple_output = False
        # names are the unwrapped model's (no ``.layer.`` segment) in state_dict, load_state_dict and
        # named_modules/parameters/buffers: a routed model saves checkpoints (and PEFT adapters) that the
        # plain model loads, and loads what the plain model saved
        self.register_state_dict_post_hook(_drop_layer_segment)
        self.register_load_state_dict_pre_hook(_add_layer_segment)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["layer"], name)

    def named_modules(self, memo: set | None = None, prefix: str = "", remove_duplicate: bool = True):
        """The wrapped layer's modules under this wrapper's name (the wrapper itself is not listed)."""
        return self._modules["layer"].named_modules(memo, prefix, remove_duplicate)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        """Skip, execute or repeat the wrapped layer for each row, as the routing state says."""
        state = self.state
        if not state.active:
            return self.layer(hidden_states, *args, **kwargs)
        i = self.routed_index
        if state.relaxation is not None:  # training: hard gates forward, gradients through the relaxation
            if _find_cache(args, kwargs) is not None:
                raise ValueError("relaxed routing runs without a KV cache (use_cache=False)")
            gate = state.relaxation.gate(i, hidden_states, state.pad_mask)
            if gate is not None and not state.relaxation.straight_through:  # no gradient: run as deployed
                return self._wrap(self._run_rows(hidden_states, gate.argmax(-1), args, kwargs))
            run = lambda h: self._call(h, args, kwargs)  # noqa: E731
            out = run_relaxed(
                run, hidden_states, gate, state.relaxation.allow_repeat, self._skipped, self._damped
            )
            return self._wrap(out)
        decisions = state.decide(i, hidden_states) if state.pending[i] or state.plan[i] is None else None
        plan = state.plan[i]
        if plan == SKIP:
            return self._wrap(self._skipped(hidden_states))
        if plan in UNIT_OFF:  # every row runs one sublayer unit
            with units_off(self.layer, {UNIT_OFF[plan]: True}, self._unit_maps()):
                return self._wrap(self._call(hidden_states, args, kwargs))
        if plan is not None:
            out = self._call(hidden_states, args, kwargs)
            if plan == REPEAT:
                out = self._damped(out, self._call(out, args, kwargs, repeat=True))
            return self._wrap(out)
        cache = _find_cache(args, kwargs)
        if cache is None:
            return self._wrap(self._run_rows(hidden_states, decisions, args, kwargs))
        return self._wrap(self._run_batch(hidden_states, decisions, args, kwargs))

    def _call(self, hidden: torch.Tensor, args, kwargs, repeat: bool = False) -> torch.Tensor:
        if repeat:
            cache = _find_cache(args, kwargs)
            if cache is not None:
                if not isinstance(cache, RoutedCache):
                    raise ValueError(
                        "a repeated layer needs its own KV-cache slot: pass "
                        "past_key_values=routed.new_cache() "
                        f"instead of a {type(cache).__name__}"
                    )
                with cache.repeat_slots():
                    return self._unwrap(self.layer(hidden, *args, **kwargs))
        return self._unwrap(self.layer(hidden, *args, **kwargs))

    def _skipped(self, hidden: torch.Tensor) -> torch.Tensor:
        """What a skip leaves: the input, or its linear stand-in."""
        stand_ins = self.state.stand_ins
        return hidden if stand_ins is None else stand_ins.apply(self.routed_index, hidden)

    def _unit_maps(self) -> dict:
        """Per unit of this layer with a linear stand-in, its map (``units_off``): the rest return zeros."""
        stand_ins, i = self.state.stand_ins, self.routed_index
        if stand_ins is None:
            return {}
        return {u: partial(stand_ins.apply_unit, u, i) for u in UNITS if stand_ins.has_unit_map(u, i)}

    def _damped(self, once: torch.Tensor, twice: torch.Tensor) -> torch.Tensor:
        """What a repeat leaves: the second pass, or the damped second pass."""
        stand_ins = self.state.stand_ins
        return twice if stand_ins is None else stand_ins.damp(self.routed_index, once, twice)

    def _run_rows(self, hidden: torch.Tensor, decisions: torch.Tensor, args, kwargs) -> torch.Tensor:
        """No cache: run the layer only on the rows that execute (then repeat) it."""
        batch, out = hidden.shape[0], hidden
        groups = [((decisions == EXECUTE) | (decisions == REPEAT), {}), (decisions == REPEAT, {})]
        groups += [(decisions == value, {unit: True}) for value, unit in UNIT_OFF.items()]
        for n, (chosen, off) in enumerate(groups):
            rows = chosen.nonzero().flatten()
            if rows.numel() == 0:
                continue
            sub_args, sub_kwargs = _gather((args, kwargs), rows, batch)
            with units_off(self.layer, off, self._unit_maps()):
                new = self._call(out[rows], sub_args, sub_kwargs)
            if n == 1:  # the repeat pass
                new = self._damped(out[rows], new)
            out = out.index_copy(0, rows, new.to(hidden.dtype))
        if self.state.stand_ins is None:  # plain skips keep their input: nothing to find (no device sync)
            return out
        skipped = (decisions == SKIP).nonzero().flatten()
        if skipped.numel():
            out = out.index_copy(0, skipped, self._skipped(hidden[skipped]))
        return out

    def _run_batch(self, hidden: torch.Tensor, decisions: torch.Tensor, args, kwargs) -> torch.Tensor:
        """With a cache: run the full batch, keep per row the input, the first or the second pass.

        Rows running one unit replace the other's output by zeros or its stand-in (it runs for the batch, and
        its cache entries for those rows are never read, since a row's decisions hold for the whole
        generation).
        """
        off = {
            unit: decisions == value for value, unit in UNIT_OFF.items() if bool((decisions == value).any())
        }
        with units_off(self.layer, off, self._unit_maps()):
            once = self._call(hidden, args, kwargs)
        keep = decisions.view(-1, *([1] * (hidden.dim() - 1)))
        out = torch.where(keep == SKIP, self._skipped(hidden), once)
        if bool((decisions == REPEAT).any()):
            twice = self._damped(once, self._call(once, args, kwargs, repeat=True))
            out = torch.where(keep == REPEAT, twice, out)
        return out

    def _unwrap(self, output):
        if isinstance(output, tuple):
            self._tuple_output = True
            return output[0]
        return output

    def _wrap(self, hidden: torch.Tensor):
        return (hidden,) if self._tuple_output else hidden


def _drop_layer_segment(module: RoutedLayer, state_dict: dict, prefix: str, local_metadata) -> None:
    """State-dict post-hook: ``<prefix>layer.<name>`` -> ``<prefix><name>``, in place and in order."""
    wrapped = prefix + "layer."
    keys = [k for k in state_dict if k.startswith(wrapped)]
    for key in keys:  # this layer's keys are the last ones added; popping and re-adding keeps the order
        state_dict[prefix + key[len(wrapped) :]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)  # per-module versions, keyed like the modules
    if metadata is not None:
        inner = wrapped[:-1]  # the wrapped layer's own entry
        for key in [k for k in metadata if k == inner or k.startswith(wrapped)]:
            metadata[prefix[:-1] if key == inner else prefix + key[len(wrapped) :]] = metadata.pop(key)


def _add_layer_segment(module: RoutedLayer, state_dict: dict, prefix: str, *_) -> None:
    """Load-state-dict pre-hook: the unwrapped key ``<prefix><name>`` -> ``<prefix>layer.<name>``."""
    wrapped = prefix + "layer."
    inner_has_layer = "layer" in module._modules["layer"]._modules
    for key in [k for k in state_dict if k.startswith(prefix)]:
        if key.startswith(wrapped) and not inner_has_layer:
            continue  # already in the wrapped form
        state_dict[wrapped + key[len(prefix) :]] = state_dict.pop(key)


def _find_cache(args, kwargs) -> Cache | None:
    for name in _CACHE_KWARGS:
        if isinstance(kwargs.get(name), Cache):
            return kwargs[name]
    return next((a for a in args if isinstance(a, Cache)), None)


def _gather(obj, rows: torch.Tensor, batch: int):
    """Index every batch-shaped tensor (2-D or more, first dim == batch) of a nested structure by ``rows``."""
    if isinstance(obj, torch.Tensor):
        return obj[rows] if obj.dim() >= 2 and obj.shape[0] == batch else obj
    if isinstance(obj, tuple):
        return tuple(_gather(o, rows, batch) for o in obj)
    if isinstance(obj, list):
        return [_gather(o, rows, batch) for o in obj]
    if isinstance(obj, dict):
        return {k: _gather(v, rows, batch) for k, v in obj.items()}
    return obj


def layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a decoder layer is called with (first positional argument or ``hidden_states``)."""
    return args[0] if args else kwargs["hidden_states"]


def put_rows(rows: torch.Tensor, hidden: torch.Tensor, module, args: tuple, kwargs: dict):
    """Forward pre-hook of ``starting_at``: replace ``rows`` of the layer's input by ``hidden[rows]``."""
    current = layer_input(args, kwargs)
    if current.shape[:2] != hidden.shape[:2]:
        raise ValueError(
            f"starting_at states have {list(hidden.shape[:2])} rows and positions, layer "
            f"{module.routed_index} runs {list(current.shape[:2])}: starting_at is for one forward "
            "without a cache"
        )
    new = current.index_copy(0, rows, hidden[rows].to(current.dtype))
    if args:
        return (new, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}
