"""``RoutedModel``: routed forward passes and generation for a Hugging Face causal LM, wrapped in place.

    routed = RoutedModel(model)                 # wraps model's decoder layers in place
    out = routed(input_ids, decisions=d)        # d: None, [L] or [B, L] of 0 skip / 1 execute / 2 repeat
    ids = routed.generate(input_ids, max_new_tokens=20)
    model = routed.unwrap()                     # the original layer objects back

With ``decisions=None`` the routers decide, once per sequence at prefill, and every generated token reuses
those decisions; without routers every layer executes once.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

from .cache import RoutedCache
from .decisions import check_decisions
from .fingerprint import architecture_string, probe_mismatch, weight_probe
from .layer import RoutedLayer, RoutingState
from .loading import load_model
from .routers import RouterConfig, Routers, window_pool
from .surgery import unwrap_layers, wrap_layers


def padded_positions(attention_mask):
    """Position ids restarting at 0 on each row's first real token (left padding), as generate makes them."""
    if attention_mask is None or attention_mask.dim() != 2:
        return None
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class RoutedModel(nn.Module):
    """A causal LM whose decoder layers are skipped, executed or repeated per input (see module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self._state = RoutingState(0)
        self._originals = wrap_layers(model, lambda layer, i: RoutedLayer(layer, i, self._state))
        self.num_layers = len(self._originals)
        self._state.__init__(self.num_layers)
        self.fingerprint = architecture_string(model.config, self.num_layers)
        self.weight_probe = weight_probe(model, self._originals)
        self.routers: Routers | None = None
        self.last_decisions: torch.Tensor | None = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, name_or_path_or_model, routers=None, **from_pretrained_kwargs) -> RoutedModel:
        """Load (or take) a causal LM, wrap it, and optionally load routers from a directory."""
        if isinstance(name_or_path_or_model, nn.Module):
            model = name_or_path_or_model
        else:
            model = load_model(str(name_or_path_or_model), **from_pretrained_kwargs)
        model.eval()
        routed = cls(model)
        if routers is not None:
            routed.load_routers(routers)
        return routed

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states the routers read."""
        return self.model.get_input_embeddings().weight.shape[1]

    @property
    def device(self) -> torch.device:
        """Device of the base model's input embeddings."""
        return self.model.get_input_embeddings().weight.device

    @property
    def budget(self) -> float:
        """Bias added to every router's skip logit: positive skips more, negative skips less."""
        return self._state.budget

    @budget.setter
    def budget(self, value: float) -> None:
        self._state.budget = float(value)

    def add_routers(self, num_windows: int = 8, hidden_size: int = 128, seed: int = 0) -> Routers:
        """Attach fresh routers (one bottleneck MLP per layer), seeded, on the model's device."""
        config = RouterConfig(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_windows=num_windows,
            bottleneck=hidden_size,
            fingerprint=self.fingerprint,
            weight_probe=self.weight_probe,
            base_model=str(getattr(self.model.config, "name_or_path", "") or ""),
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            routers = Routers(config)
        self._attach(routers)
        return routers

    def load_routers(self, directory: str | os.PathLike) -> Routers:
        """Load routers saved by ``save_pretrained``, refusing files made for another model."""
        routers = Routers.from_pretrained(directory)
        self.check_compatible(routers.config, source=str(directory))
        self._attach(routers)
        return routers

    def check_compatible(self, config: RouterConfig, source: str = "routers") -> None:
        """Raise ``ValueError`` naming both values when ``config`` was made for another model."""
        if not config.fingerprint or not config.weight_probe:
            raise ValueError(
                f"{source} record no base-model fingerprint (fingerprint and weight_probe), so they "
                "cannot be checked against this model; routers saved by drllm always carry both"
            )
        checks = [
            ("layer count", config.num_layers, self.num_layers),
            ("hidden size", config.hidden_size, self.hidden_size),
            ("model fingerprint", config.fingerprint, self.fingerprint),
        ]
        for what, saved, current in checks:
            if saved != current:
                raise ValueError(
                    f"{source} were made for a model with {what} {saved}, this model has {current}"
                )
        if probe_mismatch(config.weight_probe, self.weight_probe):
            raise ValueError(
                f"{source} were trained on other weights: weight fingerprint {config.weight_probe}, "
                f"this model has {self.weight_probe}"
            )

    def _attach(self, routers: Routers) -> None:
        self.routers = routers.to(self.device)
        self.routers.eval()
        self._state.routers = self.routers

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Save the routers as ``router_config.json`` + ``routers.safetensors``."""
        if self.routers is None:
            raise ValueError("there are no routers to save; call add_routers() or load_routers() first")
        self.routers.save_pretrained(Path(directory))

    def unwrap(self) -> nn.Module:
        """Put the original layer objects back and return the plain model."""
        return unwrap_layers(self.model, self._originals)

    # ----------------------------------------------------------------- running
    def new_cache(self) -> RoutedCache:
        """An empty KV cache with a second slot per layer for repeated passes."""
        return RoutedCache(self.model.config, self.num_layers)

    @contextlib.contextmanager
    def forced(self, decisions=None, attention_mask=None, batch_size: int | None = None):
        """Route every forward inside the context with ``decisions`` (or the routers when None)."""
        state = self._state
        if state.active:
            raise RuntimeError("RoutedModel calls do not nest")
        state.reset()
        if decisions is not None:
            state.set_decisions(check_decisions(decisions, self.num_layers, batch_size).to(self.device))
        elif self.routers is not None:
            if batch_size is None:
                raise ValueError("routing with routers needs the batch size")
            state.begin_routing(batch_size, attention_mask, self.device)
        else:
            state.set_decisions(
                torch.ones(batch_size or 1, self.num_layers, dtype=torch.long, device=self.device)
            )
        state.active = True
        try:
            yield state
        finally:
            state.active = False
            self.last_decisions = None if state.decisions is None else state.decisions.detach().clone()
            state.reset()

    def forward(self, input_ids=None, attention_mask=None, decisions=None, **kwargs):
        """The wrapped model's forward (its ``CausalLMOutput``) under ``decisions``.

        ``use_cache`` defaults to False here (no cache is built unless asked for); with ``use_cache=True``
        and no ``past_key_values`` a ``RoutedCache`` is created.
        """
        batch = self._check_inputs(input_ids, attention_mask, kwargs.get("inputs_embeds"))
        kwargs.setdefault("use_cache", False)
        if kwargs["use_cache"] and kwargs.get("past_key_values") is None:
            kwargs["past_key_values"] = self.new_cache()
        with self.forced(decisions, attention_mask, batch):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, decisions=None, **generate_kwargs):
        """``model.generate`` under ``decisions`` (or router decisions made once at prefill)."""
        batch = self._check_inputs(input_ids, attention_mask, generate_kwargs.get("inputs_embeds"))
        if generate_kwargs.get("use_cache", True) and generate_kwargs.get("past_key_values") is None:
            generate_kwargs["past_key_values"] = self.new_cache()
        with self.forced(decisions, attention_mask, batch):
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)

    @torch.no_grad()
    def layer_inputs(self, input_ids, attention_mask=None, decisions=None, num_windows: int | None = None):
        """Window-pooled hidden states entering every layer under ``decisions`` (what router i reads).

        Runs the backbone once (no LM head). ``num_windows`` defaults to the routers' W, else 8.

        Returns:
            ``(pooled [B, L, W, d] float32, valid [B, L, W] bool)``.
        """
        if num_windows is None:
            num_windows = self.routers.config.num_windows if self.routers is not None else 8
        batch = self._check_inputs(input_ids, attention_mask, None)
        if decisions is None:
            decisions = torch.ones(self.num_layers, dtype=torch.long)
        with self.forced(decisions, attention_mask, batch) as state:
            state.record = {}
            self.model.base_model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                use_cache=False,
                position_ids=padded_positions(attention_mask),
            )
            recorded = [state.record[i] for i in range(self.num_layers)]
        pooled = [window_pool(h, attention_mask, num_windows) for h in recorded]
        return torch.stack([p for p, _ in pooled], 1), torch.stack([v for _, v in pooled], 1)

    @torch.no_grad()
    def route(self, input_ids, attention_mask=None) -> torch.Tensor:
        """The routers' decisions ``[B, L]`` for prompts at ``self.budget`` (one backbone pass)."""
        if self.routers is None:
            raise ValueError("this model has no routers; call add_routers() or load_routers() first")
        batch = self._check_inputs(input_ids, attention_mask, None)
        with self.forced(None, attention_mask, batch):
            self.model.base_model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                use_cache=False,
                position_ids=padded_positions(attention_mask),
            )
        return self.last_decisions

    @property
    def context_length(self) -> int | None:
        """The most positions the model takes (``max_position_embeddings``), or None when unknown."""
        config = self.model.config
        return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def _check_inputs(self, input_ids, attention_mask, inputs_embeds) -> int:
        ids = input_ids if input_ids is not None else inputs_embeds
        if ids is None:
            raise ValueError("pass input_ids (or inputs_embeds)")
        if ids.dim() < 2:
            raise ValueError(f"input_ids must be [B, T], got shape {list(ids.shape)}")
        batch, length = ids.shape[0], ids.shape[1]
        if length == 0:
            raise ValueError("the prompt is empty (0 tokens)")
        limit = self.context_length
        if limit is not None and length > limit:
            raise ValueError(f"the prompt has {length} tokens, the model's context is {limit} tokens")
        if attention_mask is not None:
            if tuple(attention_mask.shape[:2]) != (batch, length) and attention_mask.dim() == 2:
                raise ValueError(
                    f"attention_mask has shape {list(attention_mask.shape)}, input_ids {[batch, length]}"
                )
            if attention_mask.dim() == 2 and bool((attention_mask.sum(1) == 0).any()):
                raise ValueError("a row of attention_mask has no real tokens (an empty prompt)")
        return batch

    def layer_stats(self) -> dict:
        """Layers executed per row for the last call (mean and per row)."""
        if self.last_decisions is None:
            return {}
        per_row = self.last_decisions.sum(-1).tolist()
        return {
            "layers_per_row": per_row,
            "mean_layers": sum(per_row) / len(per_row),
            "num_layers": self.num_layers,
        }
