"""``RoutedModel``: routed forward passes and generation for a Hugging Face causal LM, wrapped in place.

    routed = RoutedModel(model)                 # wraps model's decoder layers in place
    out = routed(input_ids, decisions=d)        # d: None, [L] or [B, L] of 0 skip / 1 execute / 2 repeat
    ids = routed.generate(input_ids, max_new_tokens=20)
    model = routed.unwrap()                     # the original layer objects back
    routed.save_base_model(folder)              # what plain transformers (or peft) loads back

``RoutedModel(model)`` takes a transformers ``*ForCausalLM`` or a PEFT model around one (it routes the layers
of ``get_base_model()``). A routed model's ``state_dict`` keys are the unwrapped model's, so
``routed.model.save_pretrained`` and a PEFT model's adapter saves write files the plain model loads.

With ``decisions=None`` the routers decide, once per sequence at prefill, and every generated token reuses
those decisions; without routers every layer executes once.

What search and evaluation need from inside the model is public here, so no other package touches the
routing state or transformers internals:

    with routed.recording() as states:          # states[i]: hidden entering layer i; states[L]: last output
        hidden = routed.backbone(ids, mask, d)  # final hidden states (after the final norm)
    with routed.starting_at(layers, states_in): # rows begin at a layer from given states (prefix reuse)
        hidden = routed.backbone(ids, routed.attention_mask_4d(allowed, positions), d, positions)
    logits = routed.lm_logits(hidden)           # LM head with the model's final logit softcapping
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from .atomic import files_together
from .cache import RoutedCache
from .card import write_model_card
from .checks import check_inputs, check_wrappable
from .compute import unit_shares
from .decisions import check_budget, check_decisions
from .fingerprint import architecture_string, base_model_name, check_compatible, weight_probe
from .inside import InsideModel, padded_positions  # noqa: F401 - padded_positions is public here
from .layer import RoutedLayer, RoutingState
from .loading import load_model
from .routers import RouterConfig, Routers
from .stand_ins import STAND_INS_NAME, CarriesStandIns
from .surgery import causal_lm, final_norm_scale, layer_list, put_layers, wrap_layers


class RoutedModel(InsideModel, CarriesStandIns, nn.Module):
    """A causal LM whose decoder layers are skipped, executed or repeated per input (see module docstring)."""

    def __init__(self, model: nn.Module):
        check_wrappable(model)
        super().__init__()
        self.__dict__["_given"] = model  # what unwrap() returns: the causal LM, or the PEFT model around it
        self.model = causal_lm(model)
        self._state = RoutingState(0)
        self._originals = wrap_layers(self.model, lambda layer, i: RoutedLayer(layer, i, self._state))
        self.num_layers = len(self._originals)
        self._state.__init__(self.num_layers)
        self.fingerprint = architecture_string(self.model.config, self.num_layers)
        self.weight_probe = weight_probe(self.model, self._originals)
        self.routers: Routers | None = None
        self.last_decisions: torch.Tensor | None = None
        self._start: torch.Tensor | None = None  # [B] first layer of each row, inside starting_at
        self._unwrapped = False  # set by unwrap(): the layers are the plain model's again

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
        self._state.budget = check_budget(value)

    def add_routers(
        self,
        num_windows: int = 8,
        bottleneck: int = 128,
        seed: int = 0,
        *,
        kind: str = "mlp",
        neighbours: int = 16,
        examples: int = 0,
        hidden_size: int | None = None,
        read_layer: int | None = None,
        actions: int = 3,
    ) -> Routers:
        """Attach fresh seeded routers on the model device.

        ``kind``: ``mlp`` (an MLP of ``bottleneck`` hidden units per layer, on raw window means, as in
        Dr.LLM), ``linear`` (one linear map per layer) or ``shared`` (one MLP for all layers with a layer
        embedding) or ``knn`` (the ``neighbours`` nearest of ``examples`` training prompts vote; fill it
        with ``Routers.fit_neighbours``). All but ``mlp`` read window means normalised with this model's
        final norm gain and leave out the first token (see ``drllm.router.routers``). ``hidden_size`` is
        the deprecated name of ``bottleneck`` (``self.hidden_size`` is the model width). ``read_layer``:
        every router reads that layer's input and all decide there at once (one router call per prompt;
        the layers before it keep the default path); None: router ``i`` reads layer ``i``'s input.
        ``actions=5`` adds a layer's MLP alone (3) and its attention alone (4) to skip, execute, repeat.
        """
        if hidden_size is not None:
            import warnings

            warnings.warn(
                "add_routers(hidden_size=...) is deprecated; pass bottleneck=...",
                DeprecationWarning,
                stacklevel=2,
            )
            bottleneck = hidden_size
        config = RouterConfig(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_windows=num_windows,
            bottleneck=bottleneck,
            kind=kind,
            neighbours=neighbours,
            examples=examples,
            read_layer=read_layer,
            actions=actions,
            norm=kind != "mlp",
            skip_first=kind != "mlp",
            fingerprint=self.fingerprint,
            weight_probe=self.weight_probe,
            base_model=base_model_name(self.model.config),
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            routers = Routers(config)
        if config.norm:
            routers.norm_scale.copy_(final_norm_scale(self.model, self.hidden_size))
        self._attach(routers)
        return routers

    def load_routers(self, directory: str | os.PathLike) -> Routers:
        """Load routers saved by ``save_pretrained`` (and their stand-ins), refusing another model's files."""
        routers = Routers.from_pretrained(directory)
        self.check_compatible(routers.config, source=str(directory))
        self._attach(routers)
        if routers.config.stand_ins and not (Path(directory) / STAND_INS_NAME).is_file():
            raise FileNotFoundError(f"{directory} records linear stand-ins, but has no {STAND_INS_NAME}")
        self.set_stand_ins(None) if not routers.config.stand_ins else self.load_stand_ins(directory)
        return routers

    def check_compatible(self, config: RouterConfig, source: str = "routers") -> None:
        """Raise ``ValueError`` naming both values when ``config`` was made for another model."""
        check_compatible(config, self, source)

    def attach_routers(self, routers: Routers | None, stand_ins=None) -> None:
        """Attach routers loaded or built elsewhere (checked against this model) with their stand-ins.

        ``None`` detaches the routers; the stand-ins are replaced either way (None: plain skips).
        """
        if routers is None:
            self.routers = self._state.routers = None
        else:
            self.check_compatible(routers.config)
            self._attach(routers)
        self.set_stand_ins(stand_ins)

    def _attach(self, routers: Routers) -> None:
        self.routers = routers.to(self.device)
        self.routers.eval()
        self._state.routers = self.routers
        self._state.unit_costs = unit_shares(self.model.config) if routers.config.actions == 5 else None

    def save_pretrained(self, directory: str | os.PathLike, **kwargs) -> None:
        """Save the routers as ``router_config.json`` + ``routers.safetensors``, with a ``README.md`` card.

        transformers' and peft's own arguments (``safe_serialization``, ``push_to_hub``, ...) are accepted
        and ignored: routers are always safetensors, and pushing is left to ``huggingface_hub``.
        """
        if self.routers is None:
            raise ValueError("there are no routers to save; call add_routers() or load_routers() first")
        if kwargs.get("safe_serialization") is False:
            raise ValueError("routers are saved as safetensors only; safe_serialization=False is not offered")
        self.routers.config.stand_ins = self.stand_ins is not None
        with files_together(directory) as stage:  # a failed write leaves the earlier save whole
            if self.stand_ins is not None:
                self.stand_ins.save_pretrained(stage)
            self.routers.save_pretrained(stage)
            write_model_card(stage, self.routers.config, Path(directory))
        if self.stand_ins is None and (Path(directory) / STAND_INS_NAME).exists():  # an earlier save's
            (Path(directory) / STAND_INS_NAME).unlink()

    # ----------------------------------------------------------------- as transformers and peft models
    @property
    def config(self):
        """The base model's config."""
        return self.model.config

    @property
    def generation_config(self):
        """The base model's generation config."""
        return self.model.generation_config

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the base model's input embeddings."""
        return self.model.get_input_embeddings().weight.dtype

    def __getattr__(self, name: str):
        """What the wrapper lacks comes from the base model, as with peft.

        So generation utilities that expect a transformers model (assisted generation's draft) find what
        they read.
        """
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("model", "_modules", "_parameters", "_buffers") or name.startswith("__"):
                raise
            return getattr(self.model, name)

    def can_generate(self) -> bool:
        """Whether the base model can generate (a causal LM can)."""
        return bool(self.model.can_generate())

    def num_parameters(self, only_trainable: bool = False) -> int:
        """Parameters of the base model and the routers (``only_trainable``: those that require grad)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    def unwrap(self) -> nn.Module:
        """Put the original layer objects back and return the plain model (the PEFT model, if given one).

        The wrapper is spent afterwards: a later call through it is refused (it would run the plain model).
        """
        put_layers(self.model, self._originals)
        self._unwrapped = True
        return self._given

    @contextlib.contextmanager
    def unwrapped(self) -> Iterator[nn.Module]:
        """The plain model (as given) inside the context; the same routed layers go back in ``finally``."""
        if self._state.active:
            raise RuntimeError("cannot unwrap the layers during a routed call")
        routed_layers = list(layer_list(self.model))
        put_layers(self.model, self._originals)
        try:
            yield self._given
        finally:
            put_layers(self.model, routed_layers)

    def save_base_model(self, directory: str | os.PathLike, **save_pretrained_kwargs) -> None:
        """``save_pretrained`` of the model as given, with its layers unwrapped while it saves.

        That writes the causal LM's weights and config (what ``AutoModelForCausalLM.from_pretrained`` loads)
        or, for a PEFT model, its adapter. The routers are not part of it; ``save_pretrained`` saves those.
        """
        with self.unwrapped() as model:
            model.save_pretrained(directory, **save_pretrained_kwargs)

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
        if decisions is None and self.routers is None:
            decisions = torch.ones(batch_size or 1, self.num_layers, dtype=torch.long)
        if decisions is not None:
            decisions = check_decisions(decisions, self.num_layers, batch_size, units=True).to(self.device)
            state.set_decisions(self._skip_before_start(decisions))
        elif self._start is not None:
            raise ValueError("starting_at needs explicit decisions: the routers would read skipped layers")
        elif batch_size is None:
            raise ValueError("routing with routers needs the batch size")
        else:
            state.begin_routing(batch_size, attention_mask, self.device)
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
        kwargs = self._cache_argument(kwargs, kwargs["use_cache"])
        with self.forced(decisions, attention_mask, batch):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def _cache_argument(self, kwargs: dict, use_cache: bool) -> dict:
        """``kwargs`` with the cache under the name the model takes (a new ``RoutedCache`` if none was given).

        transformers 5.24 renamed the argument ``past_key_values`` to ``cache`` (the old name warns); either
        spelling is accepted from the caller.
        """
        name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        other = "past_key_values" if name == "cache" else "cache"
        kwargs = dict(kwargs)
        given = [n for n in (name, other) if kwargs.get(n) is not None]
        if len(given) > 1:
            raise ValueError("pass the cache once, as cache= or as past_key_values=, not both")
        first, second = kwargs.pop(other, None), kwargs.pop(name, None)
        cache = first if first is not None else second  # (a Cache can be empty, hence falsy)
        if cache is None and use_cache:
            cache = self.new_cache()
        if cache is not None:
            kwargs[name] = cache
        return kwargs

    @torch.no_grad()
    def generate(self, input_ids=None, attention_mask=None, decisions=None, **generate_kwargs):
        """``model.generate`` under ``decisions`` (or router decisions made once at prefill)."""
        batch = self._check_inputs(input_ids, attention_mask, generate_kwargs.get("inputs_embeds"))
        if generate_kwargs.get("cache_implementation") not in (None, "dynamic"):
            raise ValueError(
                f"cache_implementation={generate_kwargs['cache_implementation']!r} is not supported: routed "
                "generation keeps its own cache (RoutedCache, with a second slot per layer for repeats)"
            )
        generate_kwargs.pop("cache_implementation", None)
        generate_kwargs = self._cache_argument(generate_kwargs, generate_kwargs.get("use_cache", True))
        with self.forced(decisions, attention_mask, batch):
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)

    @property
    def context_length(self) -> int | None:
        """The most positions the model takes (``max_position_embeddings``), or None when unknown."""
        config = self.model.config
        return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def _check_inputs(self, input_ids, attention_mask, inputs_embeds, packed: bool = False) -> int:
        """Refuse bad inputs in one line; returns the batch size (``checks.check_inputs``)."""
        return check_inputs(self, input_ids, attention_mask, inputs_embeds, packed)
