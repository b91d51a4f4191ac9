"""What made a search's records (SearchSettings): a search appends only to a file whose records share them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from drllm.router.fingerprint import probe_mismatch

from .tasks import same_task

if TYPE_CHECKING:  # annotations only: records.py imports this module
    from .records import SearchRecord


class SettingsMismatchError(ValueError):
    """An output file holds records searched with other settings."""


@dataclass(frozen=True)
class SearchSettings:
    """What made a search's records; a search appends only to a file whose records share every value.

    A record keeps ``task``, ``model``, ``scoring`` and ``style`` in its own fields and the rest in its
    ``settings`` object (``SearchOutput`` writes it). Rows of older files compare only what they carry;
    the model's name counts only where a row has no fingerprint (one model has many names).
    """

    task: str
    model: str
    scoring: str
    style: str
    split: str
    simulations: int
    seed: int
    fingerprint: str
    weight_probe: tuple[float, ...] = ()
    sweep: bool = True
    control: str = "none"
    seeds: int = 1
    safe_margin: float = 0.0
    fix_margin: float = 0.0
    max_new_tokens: int | None = None
    """Decoded tokens per path under the ``generate`` scoring (None: teacher-forced, nothing decoded)."""
    dtype: str = ""
    units: str = "block"
    """The tree's actions: ``block`` or ``sublayer`` (also a layer's MLP alone, or its attention alone)."""
    """The dtype the model computed in (``float32``, ``bfloat16``, ...): rewards differ between dtypes."""

    def stamp(self, record: SearchRecord) -> SearchRecord:
        """The record with this search's ``settings`` object."""
        own = {k: v for k, v in dataclasses.asdict(self).items() if k not in _RECORD_FIELDS}
        own["weight_probe"] = list(self.weight_probe)
        return dataclasses.replace(record, settings={**(record.settings or {}), **own})

    def differences(self, record: SearchRecord) -> dict[str, tuple]:
        """``{key: (the record's value, this search's)}`` for every setting the record holds otherwise."""
        saved = {k: getattr(record, k) for k in _RECORD_FIELDS} | (record.settings or {})
        if saved.get("fingerprint"):
            saved.pop("model")
        differ = {}
        for key, now in dataclasses.asdict(self).items():
            old = saved.get(key)
            if key == "units" and old is None and record.settings:
                old = "block"  # written before sublayer searches existed
            if old is None or old == "" or old == []:
                continue
            if key == "weight_probe":
                same = isinstance(old, list) and not probe_mismatch(old, list(now))
            elif key == "task":
                same = isinstance(old, str) and same_task(old, now)
            else:
                same = old == now
            if not same:
                differ[key] = (old, list(now) if key == "weight_probe" else now)
        return differ

    def check(self, records: list[SearchRecord], path: Path) -> None:
        """Refuse, naming both values, a file holding a record searched with other settings."""
        for record in records:
            differ = self.differences(record)
            if differ:
                details = ", ".join(f"{k}: file {a!r}, now {b!r}" for k, (a, b) in differ.items())
                raise SettingsMismatchError(
                    f"{path} holds example {record.id!r} searched with other settings ({details}); "
                    "restart (--restart true) sets the file aside and searches again, "
                    "or choose another --output"
                )


_RECORD_FIELDS = ("task", "model", "scoring", "style")
