"""The Lightning data module for router training: a seeded train/validation split by example.

Two modes share the split and the batching:

- cached: items are ``{"pooled" [L, W, d], "valid" [L, W], "decisions" [L]}`` from a
  :class:`~drllm.train.features.FeatureSet`; training never runs the base model.
- online: items are ``{"prompt": str, "decisions" [L]}``; the module runs the frozen model each step.
"""

from __future__ import annotations

import warnings

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from drllm.search.records import SearchRecord

from .features import FeatureSet


class _Items(Dataset):
    """Examples by index: cached pooled inputs or prompts, their decisions, and per-example ``extras``.

    ``extras`` maps a key to an ``[N, ...]`` tensor (``targets``, ``gains``) or None (left out).
    """

    def __init__(self, features: FeatureSet | None, rows, indices: list[int], extras: dict):
        self.features, self.rows, self.indices = features, rows, indices
        self.extras = {k: v for k, v in extras.items() if v is not None}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict:
        i, f = self.indices[k], self.features
        if f is not None:
            item = {"pooled": f.pooled[i], "valid": f.valid[i], "decisions": f.decisions[i]}
        else:
            row = self.rows[i]
            item = {"prompt": row.prompt, "decisions": torch.tensor(row.decisions, dtype=torch.long)}
        return {**item, **{key: value[i] for key, value in self.extras.items()}}


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded random split of ``range(n)`` into (train, val); at least one of each when ``n >= 2``."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction is {val_fraction}, expected a value in [0, 1)")
    if n < 1:
        raise ValueError("there are no examples to split")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = 0 if n < 2 else min(n - 1, max(1, round(n * val_fraction)))
    return sorted(order[n_val:]), sorted(order[:n_val])


class RouterDataModule(L.LightningDataModule):
    """Train/validation loaders over cached features or over prompts (online mode).

    Args:
        features: a FeatureSet (cached mode).
        rows: records from ``read_records`` (online mode; give ``features=None``).
        batch_size: examples per batch.
        val_fraction: share of examples held out for validation (at least one when N >= 2).
        seed: seed of the split.
        targets: ``[N, L, A]`` target distributions (``drllm.train.targets``); None: the labelled paths.
        gains: ``[N, L, 2]`` single-edit gains (``drllm.train.regret``) for the validation regret, or None.
        actions: the routers' actions, 3 (skip, execute, repeat) or 5 (and the two sublayer units).
    """

    def __init__(
        self,
        features: FeatureSet | None = None,
        rows: list[SearchRecord] | None = None,
        batch_size: int = 16,
        val_fraction: float = 0.1,
        seed: int = 0,
        targets: torch.Tensor | None = None,
        gains: torch.Tensor | None = None,
        actions: int = 3,
    ):
        super().__init__()
        self.targets, self.gains, self.actions = targets, gains, actions
        if (features is None) == (rows is None):
            raise ValueError("give exactly one of features (cached mode) or rows (online mode)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.features, self.rows, self.batch_size = features, rows, batch_size
        n = len(features) if features is not None else len(rows)
        self.train_indices, self.val_indices = split_indices(n, val_fraction, seed)
        if not self.val_indices:
            warnings.warn("only one example: validating on the training example", stacklevel=2)
            self.val_indices = list(self.train_indices)

    @property
    def online(self) -> bool:
        """Whether batches carry prompts for the module to run through the model."""
        return self.rows is not None

    def _decisions(self, indices: list[int]) -> torch.Tensor:
        if self.features is not None:
            return self.features.decisions[indices]
        return torch.tensor([self.rows[i].decisions for i in indices], dtype=torch.long)

    def class_counts(self) -> torch.Tensor:
        """Counts of each action ``[A]`` (skip, execute, repeat, ...) over every layer of the training split.

        With soft targets, the summed target shares.
        """
        if self.targets is not None:
            return self.targets[self.train_indices].reshape(-1, self.targets.shape[-1]).sum(0)
        return torch.bincount(self._decisions(self.train_indices).flatten(), minlength=self.actions)

    def _items(self, indices: list[int]) -> Dataset:
        return _Items(self.features, self.rows, indices, {"targets": self.targets, "gains": self.gains})

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (the shuffle follows Lightning's seed)."""
        return DataLoader(self._items(self.train_indices), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in a fixed order; under DDP each example on exactly one process."""
        items = self._items(self.val_indices)
        return DataLoader(items, batch_size=self.batch_size, shuffle=False, sampler=_unrepeated(items))


def _unrepeated(items: Dataset) -> UnrepeatedDistributedSampler | None:
    """A DDP sampler giving every process its share of ``items`` without repeats (None outside DDP).

    Lightning's default ``DistributedSampler`` repeats examples to even out the shards, which would count
    them twice in the validation metrics. Each process needs at least one example, so with fewer examples
    than processes Lightning's default stays.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    if world < 2 or len(items) < world:
        return None
    return UnrepeatedDistributedSampler(items, num_replicas=world, rank=dist.get_rank(), shuffle=False)
