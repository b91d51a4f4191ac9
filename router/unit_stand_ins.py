"""Linear stand-ins for switched-off sublayer units: the part of ``StandIns`` that maps a unit's own input.

When a row runs layer ``i`` with its attention (decision 3) or its MLP (decision 4) switched off, the unit
returns zeros, so the layer adds nothing for it. With a unit map, the switched-off module returns
``x @ down @ up + bias`` of its own input ``x`` instead (the state after the layer's input norm where the
architecture has one): a cheap linear imitation of the unit's output, fitted in closed form on calibration
prompts (``drllm.search.unit_stand_ins``). Whatever the layer does with a unit's output afterwards (a
post-norm in gemma3 and olmo2, gpt_neox's parallel residual) it does with the map's output. Full rank
stores ``down`` ``[d, d]`` and no ``up``; rank ``r`` (the rank of the block maps beside them) stores
``[d, r]`` and ``[r, d]``. A unit without a map is switched off plainly. A map acts on each position
alone, so it writes no KV-cache entry and routed generation with a cache stays exact.

Unit maps live in the same ``stand_ins.safetensors`` as the block maps, as ``attention_down_<i>``,
``mlp_bias_<i>`` and so on; the header lists them as ``unit_mapped`` (``{"attention": [...], "mlp":
[...]}``), written only when there are some, so files without unit maps are what they always were.
"""

from __future__ import annotations

import torch

UNITS = ("attention", "mlp")


class CarriesUnitMaps:
    """``StandIns``' part: per-layer linear maps for switched-off attentions and MLPs."""

    unit_mapped: dict[str, list[int]]

    def set_unit_map(
        self, unit: str, index: int, down: torch.Tensor, bias: torch.Tensor, up: torch.Tensor | None = None
    ) -> None:
        """Layer ``index``'s ``unit``, switched off, returns ``x @ down @ up + bias`` of its input ``x``."""
        if unit not in UNITS:
            raise ValueError(f"a unit map is for 'attention' or 'mlp', got {unit!r}")
        self._check_layer(index)
        self._store(f"the {unit} of layer {index}", f"{unit}_", index, down, bias, up)
        if index not in self.unit_mapped[unit]:
            self.unit_mapped[unit] = sorted([*self.unit_mapped[unit], index])

    def has_unit_map(self, unit: str, index: int) -> bool:
        """Whether layer ``index``'s ``unit`` (``"attention"`` or ``"mlp"``), switched off, runs a map."""
        return index in self.unit_mapped.get(unit, ())

    def apply_unit(self, unit: str, index: int, x: torch.Tensor) -> torch.Tensor:
        """The switched-off unit's output for its input ``x`` ``[..., d]``: its map, or zeros without one."""
        if not self.has_unit_map(unit, index):
            return torch.zeros_like(x)
        return self._map(f"{unit}_", index, x)

    def unit_macs_per_token(self, unit: str, index: int) -> int:
        """Multiply-adds per token of the map of layer ``index``'s switched-off ``unit`` (0 without one)."""
        return self._map_macs() if self.has_unit_map(unit, index) else 0

    def _unit_header(self) -> dict:
        """The header entry of the unit maps (none when there are none, as in files before them)."""
        return {"unit_mapped": dict(self.unit_mapped)} if any(self.unit_mapped.values()) else {}

    def _load_unit_maps(self, listed, state: dict) -> None:
        """Set the unit maps the header lists (``listed``), taking their tensors out of ``state``."""
        if listed is None:
            return
        if not isinstance(listed, dict) or not set(listed) <= set(UNITS):
            raise ValueError(
                f"the header's 'unit_mapped' must map 'attention'/'mlp' to layers, got {listed!r}"
            )
        for unit, layers in listed.items():
            if not isinstance(layers, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in layers
            ):
                raise ValueError(
                    f"the header's 'unit_mapped' {unit!r} must be a list of layer numbers, got {layers!r}"
                )
            for i in layers:
                tensors = [state.pop(f"{unit}_{name}_{i}") for name in ("down", "bias")]
                self.set_unit_map(unit, i, *tensors, state.pop(f"{unit}_up_{i}", None))
