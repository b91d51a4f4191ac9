"""Teacher-forced router inputs: the window-pooled hidden states entering each layer, cached on disk.

While training, the frozen model follows each example's labelled path, so what router ``i`` reads is fixed
per example: one forward per example gives ``pooled [L, W, d]`` and ``valid [L, W]``. ``build_features``
computes them for every row once and caches them as ``<cache_dir>/<key>.safetensors``, where the key hashes
the model's fingerprint and weight probe, W, and every row's id, prompt and decisions; the file is written
to a temporary name and renamed, so an interrupted build is never read back. ``online_pooled`` is the same
computation for one batch, without a cache (the online training mode).

Prompts are tokenized as the search tokenizes them (``drllm.router.encode_prompt``: special tokens are
added unless the text already starts with BOS), left-padded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from drllm.router import batch_prompts, encode_prompt
from drllm.router.atomic import atomic_write
from drllm.search import progress
from drllm.search.records import SearchRecord

FORMAT_VERSION = 1


@dataclasses.dataclass
class FeatureSet:
    """Pooled router inputs for N examples (all on CPU).

    Attributes:
        pooled: ``[N, L, W, d]`` float32 window means of the hidden states entering each layer.
        valid: ``[N, L, W]`` bool, False for windows past a short prompt's clamped window count.
        decisions: ``[N, L]`` long labelled paths (0 skip, 1 execute, 2 repeat).
        ids: the N example ids, in row order.
    """

    pooled: torch.Tensor
    valid: torch.Tensor
    decisions: torch.Tensor
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_windows(self) -> int:
        """W, the number of windows per layer."""
        return self.pooled.shape[2]

    def save(self, path: str | os.PathLike) -> None:
        """Write to ``path`` (safetensors) through a temporary file, so a partial file never appears."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "pooled": self.pooled.contiguous(),
            "valid": self.valid.contiguous(),
            "decisions": self.decisions.contiguous(),
        }
        metadata = {"ids": json.dumps(self.ids), "format": str(FORMAT_VERSION), "sha256": _checksum(tensors)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureSet:
        """Read a file written by :meth:`save`.

        Raises:
            ValueError: when the tensors do not match the checksum saved with them (a damaged file).
        """
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
            ids = json.loads(metadata["ids"])
            tensors = {k: f.get_tensor(k) for k in ("pooled", "valid", "decisions")}
        saved = metadata.get("sha256")
        if saved is not None and saved != _checksum(tensors):
            raise ValueError(f"{path}: the features do not match their checksum (a damaged file)")
        return cls(ids=ids, **tensors)


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(
    routed, rows: list[SearchRecord], num_windows: int, skip_first: bool = False, tokenizer=None
) -> str:
    """sha256 over the model fingerprint and probe, W, ``skip_first`` and each row (id, prompt, path).

    With a ``tokenizer`` each row's token ids count too, so features made with another tokenizer (the same
    text, other tokens) are never reused.
    """
    digest = hashlib.sha256()
    header = {
        "format": FORMAT_VERSION,
        "fingerprint": routed.fingerprint,
        "weight_probe": list(routed.weight_probe),
        "num_windows": int(num_windows),
    }
    if skip_first:  # absent when False, so caches written before the option stay valid
        header["skip_first"] = True
    digest.update(json.dumps(header, sort_keys=True).encode())
    for row in rows:
        digest.update(json.dumps([row.id, row.prompt, list(row.decisions)]).encode())
        if tokenizer is not None:
            digest.update(json.dumps(encode_prompt(tokenizer, row.prompt)).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def tokenize_prompts(tokenizer, prompts: list[str], device: torch.device | str = "cpu"):
    """Left-padded ``(input_ids, attention_mask)``, encoded as search and generation encode prompts."""
    return batch_prompts(tokenizer, list(prompts), device)


def online_pooled(
    routed, tokenizer, prompts: list[str], decisions: torch.Tensor, num_windows: int, skip_first: bool = False
):
    """Pooled inputs of every router for one batch, the model following ``decisions`` ``[B, L]``.

    ``skip_first`` leaves each prompt's first token out of the pooling.

    Returns:
        ``(pooled [B, L, W, d] float32, valid [B, L, W] bool)`` on the model's device.
    """
    input_ids, attention_mask = tokenize_prompts(tokenizer, prompts, routed.device)
    decisions = torch.as_tensor(decisions, dtype=torch.long).to(routed.device)
    return routed.layer_inputs(
        input_ids, attention_mask, decisions=decisions, num_windows=num_windows, skip_first=skip_first
    )


def build_features(
    routed,
    tokenizer,
    rows: list[SearchRecord],
    num_windows: int,
    batch_size: int = 8,
    cache_dir: str | os.PathLike | None = None,
    skip_first: bool = False,
) -> FeatureSet:
    """Teacher-forced pooled inputs for every row, reused from ``cache_dir`` when the key matches.

    Args:
        routed: the ``RoutedModel`` (frozen) whose layers the routers will route.
        tokenizer: its tokenizer.
        rows: records from :func:`drllm.search.records.read_records` (``id``, ``prompt``, ``decisions``).
        num_windows: W.
        batch_size: prompts per forward; prompts are grouped by token length to limit padding.
        cache_dir: folder of cached feature files; None disables caching.
        skip_first: leave each prompt's first token out of the pooling (routers with ``skip_first``).

    Returns:
        The :class:`FeatureSet`, in row order.
    """
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{cache_key(routed, rows, num_windows, skip_first, tokenizer)}.safetensors"
        if path.is_file():
            cached = _load_cached(path, len(rows))
            if cached is not None:
                return cached
    features = _compute(routed, tokenizer, rows, num_windows, batch_size, skip_first)
    if path is not None:
        features.save(path)
    return features


def _load_cached(path: Path, rows: int) -> FeatureSet | None:
    """A cached feature file, or None (with a warning) when it is unreadable or incomplete: it is rebuilt."""
    try:
        features = FeatureSet.load(path)
    except Exception as err:  # a damaged file is never used, whatever the reader raises
        warnings.warn(f"feature cache {path} is unreadable ({err}); rebuilding it", stacklevel=3)
        return None
    if len(features) != rows:
        warnings.warn(
            f"feature cache {path} holds {len(features)} rows, expected {rows}; rebuilding it", stacklevel=3
        )
        return None
    return features


def _compute(routed, tokenizer, rows, num_windows, batch_size, skip_first=False) -> FeatureSet:
    """Run the frozen model over the rows in batches of similar length; results back in row order."""
    lengths = [len(encode_prompt(tokenizer, r.prompt)) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: lengths[i])
    decisions = torch.tensor([r.decisions for r in rows], dtype=torch.long)  # [N, L]
    pooled, valid = [None] * len(rows), [None] * len(rows)
    starts = range(0, len(rows), batch_size)
    bar = progress.bar(len(starts), "router features", "batch")
    for start in starts:
        bar.update(1)
        chunk = order[start : start + batch_size]
        p, v = online_pooled(
            routed, tokenizer, [rows[i].prompt for i in chunk], decisions[chunk], num_windows, skip_first
        )
        for j, i in enumerate(chunk):
            pooled[i], valid[i] = p[j].float().cpu(), v[j].cpu()
    return FeatureSet(torch.stack(pooled), torch.stack(valid), decisions, [r.id for r in rows])
