"""A KV cache with a second slot per layer, for the repeated pass of a layer.

Layer ``i`` writes its first pass into slot ``i`` and, when it is repeated, its second pass into slot
``L + i``: a repeated layer never writes twice into one slot, so cached generation equals uncached
generation. The cache is a ``DynamicCache`` built twice from the model config (so per-layer cache types,
such as sliding windows, are kept for the repeat slots too).

A skipped layer never writes its slot. The model asks the cache for its length (``get_seq_length``) and
mask sizes through fixed slots (usually slot 0); when such a slot has never been written, the question is
answered by the first written slot of the same kind (full or sliding attention), which holds the same
number of tokens because decisions are fixed for a whole generation.
"""

from __future__ import annotations

import contextlib

from transformers import DynamicCache


class RoutedCache(DynamicCache):
    """``DynamicCache`` with ``2 * L`` slots; see the module docstring.

    Args:
        config: the model config (as for ``DynamicCache(config=...)``).
        num_layers: L, the number of decoder layers.
    """

    def __init__(self, config, num_layers: int):
        super().__init__(config=config)
        if len(self.layers) != num_layers:
            raise ValueError(
                f"cache built from the config has {len(self.layers)} slots, the model has {num_layers} layers"
            )
        self.layers.extend(DynamicCache(config=config).layers)
        self.num_layers = num_layers
        self._offset = 0

    @contextlib.contextmanager
    def repeat_slots(self):
        """Within this context, writes to slot ``i`` go to slot ``L + i`` (the repeat slot)."""
        previous, self._offset = self._offset, self.num_layers
        try:
            yield self
        finally:
            self._offset = previous

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        """Write into slot ``layer_idx`` (or its repeat slot inside ``repeat_slots``)."""
        return super().update(key_states, value_states, layer_idx + self._offset, *args, **kwargs)

    def _reference_slot(self, layer_idx: int) -> int:
        layer_idx = layer_idx + self._offset
        if layer_idx >= len(self.layers) or _written(self.layers[layer_idx]):
            return layer_idx
        sliding = self.is_sliding[layer_idx]
        for j, layer in enumerate(self.layers):
            if self.is_sliding[j] == sliding and _written(layer):
                return j
        return layer_idx

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens cached, read from a written slot of the same kind as ``layer_idx``."""
        return super().get_seq_length(self._reference_slot(layer_idx))

    def get_mask_sizes(self, query, layer_idx: int):
        """Mask sizes, read from a written slot of the same kind as ``layer_idx``."""
        return super().get_mask_sizes(query, self._reference_slot(layer_idx))


def _written(layer) -> bool:
    if not getattr(layer, "is_initialized", False):
        return False
    keys = getattr(layer, "keys", None)
    return keys is not None and keys.numel() > 0
