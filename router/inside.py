"""What search and evaluation need from inside a routed model, as ``RoutedModel`` methods (a mixin).

    with routed.recording() as states:          # states[i]: hidden entering layer i; states[L]: last output
        hidden = routed.backbone(ids, mask, d)  # final hidden states (after the final norm)
    with routed.starting_at(layers, states_in): # rows begin at a layer from given states (prefix reuse)
        hidden = routed.backbone(ids, routed.attention_mask_4d(allowed, positions), d, positions)
    with routed.watching_units(units, fn):      # fn((unit, i), x, y): a sublayer unit's input and output
        routed.backbone(ids, mask, d)
    logits = routed.lm_logits(hidden)           # LM head with the model's final logit softcapping

No other package touches the routing state or transformers internals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial

import torch

from .decisions import SKIP
from .layer import layer_input, put_rows
from .pooling import pooling_mask, window_pool, window_weights
from .surgery import additive_masks, layer_list, softcap_logits, sublayer


def padded_positions(attention_mask):
    """Position ids restarting at 0 on each row's first real token (left padding), as generate makes them."""
    if attention_mask is None or attention_mask.dim() != 2:
        return None
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class InsideModel:
    """``backbone``, ``lm_logits``, ``attention_mask_4d``, ``recording`` and ``starting_at``."""

    def backbone(
        self, input_ids, attention_mask=None, decisions=None, position_ids=None, route_mask=None
    ) -> torch.Tensor:
        """Final hidden states (after the final norm, before the LM head) of one forward without a cache.

        Args:
            input_ids: ``[B, T]`` token ids.
            attention_mask: ``[B, T]`` with 1 on real tokens (left or right padding), or a mask made by
                ``attention_mask_4d``; None: no padding.
            decisions: ``[L]`` or ``[B, L]``; None: the routers decide (they need a ``[B, T]`` mask), or
                every layer executes once when there are no routers.
            position_ids: ``[B, T]``; by default they restart at 0 on each row's first real token of a
                ``[B, T]`` mask, as ``generate`` makes them.
            route_mask: ``[B, T]``, 1 on the tokens the routers pool (a packed row's prompt) when the
                routers decide under a mask from ``attention_mask_4d``. The tokens must form a prefix that
                attends only to itself, so the decisions equal those made on the prompt alone.

        Returns:
            ``[B, T, d]`` hidden states; ``lm_logits`` turns them into logits.
        """
        packed = position_ids is not None
        batch = self._check_inputs(input_ids, attention_mask, None, packed)
        limit = self.context_length
        if packed and limit is not None and int(position_ids.max()) >= limit:
            raise ValueError(
                f"position {int(position_ids.max())} is past the model's context of {limit} tokens"
            )
        flat = attention_mask is None or (
            isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2
        )
        if not flat and decisions is None and self.routers is not None and route_mask is None:
            raise ValueError(
                "the routers need a [B, T] attention_mask or a route_mask; pass decisions with a 4D mask"
            )
        if position_ids is None and flat:
            position_ids = padded_positions(attention_mask)
        pool = route_mask if route_mask is not None else (attention_mask if flat else None)
        with self.forced(decisions, pool, batch):
            out = self.model.base_model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            )
        return out.last_hidden_state

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., V]`` of final hidden states ``[..., d]`` (from ``backbone``).

        Applies the LM head, then the model's ``final_logit_softcapping`` when it has one (Gemma), exactly
        as the model's own forward does.
        """
        return softcap_logits(self.model.config, self.model.get_output_embeddings()(hidden))

    def attention_mask_4d(
        self, allowed: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype | None = None
    ):
        """The additive attention mask ``backbone`` takes for an arbitrary attention pattern.

        Args:
            allowed: ``[B, T, T]`` bool, True where query ``i`` may attend to key ``j``. Every query needs
                one allowed key (let a padding query attend to itself).
            positions: ``[B, T]``, the position ids passed to ``backbone``. Sliding-window layers also hide
                keys ``sliding_window`` or more positions behind the query.
            dtype: of the mask; by default the model's.

        Returns:
            ``[B, 1, T, T]`` on the model's device (0 where allowed, the dtype's minimum elsewhere); for a
            model mixing full and sliding-window layers, a dict of such masks keyed by layer type.
        """
        if allowed.dim() != 3 or allowed.shape[1] != allowed.shape[2] or positions.shape != allowed.shape[:2]:
            raise ValueError(
                f"allowed must be [B, T, T] and positions [B, T], got {list(allowed.shape)} and "
                f"{list(positions.shape)}"
            )
        dtype = dtype or self.model.get_input_embeddings().weight.dtype
        device = self.device
        return additive_masks(self.model.config, allowed.to(device).bool(), positions.to(device), dtype)

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[torch.Tensor]]:
        """Record the hidden states entering every layer during the forwards inside the context.

        Yields a list that each forward refills: ``states[i]`` ``[B, T, d]`` is the state entering layer ``i``
        (``i < L``) and ``states[L]`` the last layer's output, before the final norm. A skipped layer's
        input equals the next layer's. Rows started by ``starting_at`` show the state put in.

        Example:
            with routed.recording() as states:
                routed.backbone(input_ids, attention_mask)
        """
        states: list[torch.Tensor] = []
        layers = layer_list(self.model)

        def enter(module, args, kwargs):
            if module.routed_index == 0:
                states.clear()
            states.append(layer_input(args, kwargs))

        def leave(module, args, output):
            states.append(output[0] if isinstance(output, tuple) else output)

        handles = [layer.register_forward_pre_hook(enter, with_kwargs=True) for layer in layers]
        handles.append(layers[-1].register_forward_hook(leave))
        try:
            yield states
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def watching_units(self, units, fn) -> Iterator[None]:
        """Show ``fn`` the input and output of sublayer units in every forward inside the context.

        Args:
            units: ``(unit, layer)`` pairs, ``unit`` being ``"attention"`` or ``"mlp"``.
            fn: called as ``fn((unit, layer), x, y)`` each time that unit runs: ``x`` ``[B, T, d]`` is the
                module's input (after the layer's input norm where it has one) and ``y`` its output (an
                attention's first output), before the layer adds it to the residual stream (or post-norms
                it). A unit switched off by the decisions is not run, so not shown.
        """
        layers, handles = layer_list(self.model), []

        def watch(key, module, args, kwargs, output):
            fn(key, layer_input(args, kwargs), output[0] if isinstance(output, tuple) else output)

        try:
            for unit, i in units:
                module = sublayer(layers[i].layer, unit)
                handles.append(module.register_forward_hook(partial(watch, (unit, i)), with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def starting_at(self, layers, hidden: torch.Tensor) -> Iterator[None]:
        """Start rows at a given layer from given hidden states, in the one forward inside the context.

        Row ``r`` skips layers ``0 .. layers[r] - 1`` (whatever its decisions say) and enters layer
        ``layers[r]`` with ``hidden[r]`` in place of its own state; rows with ``layers[r] == 0`` run as usual.
        This is prefix reuse: ``hidden`` comes from ``recording`` along a path that shares those layers.
        Meant for forwards without a KV cache (``backbone``), with explicit decisions.

        Args:
            layers: ``[B]`` ints in ``0 .. L - 1``.
            hidden: ``[B, T, d]``, the states entering those layers (ignored for rows starting at 0).

        Raises:
            ValueError: when the shapes disagree with each other or with the forward, or a layer is out
                of range.
        """
        if self._start is not None:
            raise RuntimeError("starting_at contexts do not nest")
        starts = torch.as_tensor(layers, dtype=torch.long).flatten().tolist()
        if hidden.dim() != 3 or hidden.shape[0] != len(starts):
            raise ValueError(
                f"hidden must be [B, T, d] with B = {len(starts)} rows, got {list(hidden.shape)}"
            )
        if any(not 0 <= s < self.num_layers for s in starts):
            raise ValueError(f"start layers must be in 0..{self.num_layers - 1}, got {sorted(set(starts))}")
        modules, handles = layer_list(self.model), []
        for i in sorted(set(starts) - {0}):
            rows = torch.tensor([r for r, s in enumerate(starts) if s == i], device=hidden.device)
            hook = partial(put_rows, rows, hidden)
            handles.append(modules[i].register_forward_pre_hook(hook, with_kwargs=True, prepend=True))
        self._start = torch.tensor(starts, device=self.device)
        try:
            yield
        finally:
            self._start = None
            for handle in handles:
                handle.remove()

    def _skip_before_start(self, decisions: torch.Tensor) -> torch.Tensor:
        """Decisions with each row's layers before its ``starting_at`` layer skipped."""
        if self._start is None:
            return decisions
        if decisions.shape[0] not in (1, len(self._start)):
            raise ValueError(f"starting_at has {len(self._start)} rows, the decisions {decisions.shape[0]}")
        before = torch.arange(self.num_layers, device=decisions.device)[None] < self._start[:, None]
        return decisions.expand(len(self._start), -1).masked_fill(before, SKIP)

    @torch.no_grad()
    def layer_inputs(
        self,
        input_ids,
        attention_mask=None,
        decisions=None,
        num_windows: int | None = None,
        skip_first: bool | None = None,
    ):
        """Window-pooled hidden states entering every layer under ``decisions`` (what router i reads).

        Runs the backbone once (no LM head). ``num_windows`` and ``skip_first`` (leave each prompt's first
        token out) default to the routers' settings, else 8 and False. The means are raw: routers with
        ``norm`` normalise them themselves.

        Returns:
            ``(pooled [B, L, W, d] float32, valid [B, L, W] bool)``.
        """
        if num_windows is None:
            num_windows = self.routers.config.num_windows if self.routers is not None else 8
        if skip_first is None:
            skip_first = self.routers.config.skip_first if self.routers is not None else False
        if decisions is None:
            decisions = torch.ones(self.num_layers, dtype=torch.long)
        with self.recording() as states:
            self.backbone(input_ids, attention_mask, decisions)
        b, t = input_ids.shape
        mask = pooling_mask(attention_mask, b, t, skip_first, input_ids.device)
        weights = window_weights(mask, b, t, num_windows, input_ids.device)
        pooled = [window_pool(h, mask, num_windows, weights) for h in states[: self.num_layers]]
        return torch.stack([p for p, _ in pooled], 1), torch.stack([v for _, v in pooled], 1)

    @torch.no_grad()
    def route(self, input_ids, attention_mask=None) -> torch.Tensor:
        """The routers' decisions ``[B, L]`` for prompts at ``self.budget`` (one backbone pass)."""
        if self.routers is None:
            raise ValueError("this model has no routers; call add_routers() or load_routers() first")
        self.backbone(input_ids, attention_mask)
        return self.last_decisions
