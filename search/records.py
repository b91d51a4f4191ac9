"""Search records: the JSONL file that search writes and that training and evaluation read.

One :class:`SearchRecord` per line, one JSON object per line (so ``datasets.load_dataset("json", ...)``
loads the file). :class:`SearchOutput` is the only writer and :func:`read_records` the only reader; both
check every line with :meth:`SearchRecord.from_dict`, so an error always names the file and 1-based line.

Crash safety: each line is written with one ``write`` on a file opened for appending, then flushed and
fsynced. A crash can leave at most a torn last line (no trailing newline, not valid JSON): the reader
drops it with a warning, and the writer cuts it off (with the same warning) before appending. A last line
that is a whole row missing only its newline is kept, and the writer completes it. A file with a
malformed complete line is refused before anything in it is changed. A lock file (``<file>.lock``, taken
with ``filelock``) keeps two searches from writing the same output.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import filelock

from .output_files import (  # noqa: F401 - moved; importable from here as before
    OutputLockedError,
    _acquire,
    check_block_paths,
    check_output,
    check_searched_with,
    claimed_output,
    folder_lock,
    set_aside,
)
from .record_fields import (  # noqa: F401 - DECISION_VALUES, validate_path: importable from here
    DECISION_VALUES,
    _count,
    _id,
    _layers,
    _number,
    _paths,
    _text,
    validate_path,
)
from .settings import (  # noqa: F401 - moved; importable from here as before
    _RECORD_FIELDS,
    SearchSettings,
    SettingsMismatchError,
)
from .supervision_checks import check_supervision

REQUIRED_KEYS = ("id", "prompt", "decisions")


@dataclass
class SearchRecord:
    """One searched example: the path found for it and what the search measured.

    Only ``id``, ``prompt`` and ``decisions`` are required when reading (training needs nothing else);
    rows written before ``evaluations``, ``scoring``, ``style`` and ``num_layers`` existed load with
    their defaults. Keys this version does not know are kept in ``extra`` and written back.
    """

    id: str
    """Example id, unique in the file among its task's."""
    prompt: str
    """The text fed to the model, already formatted in the search's prompt style."""
    decisions: list[int]
    """The chosen path: one value per decoder layer, 0 skip, 1 execute, 2 repeat (3 MLP alone, 4 attention
    alone in a ``--units sublayer`` search)."""
    task: str = ""
    """Task name (``arc_easy``, ``jsonl:PATH``, ...)."""
    model: str = ""
    """Model name or folder."""
    target: str = ""
    """The gold continuation scored by the search."""
    layers: float | None = None
    """Layers the chosen path costs: ``sum(decisions)`` for blocks (computed when absent); a sublayer
    path's units count their share of a layer's multiply-adds (``drllm.search.mcts.path_cost``), or half a
    layer each in a row written without ``layers``."""
    reward: float | None = None
    """Reward of the chosen path (None in files the search did not write)."""
    base_reward: float | None = None
    """Reward of the default all-execute path."""
    correct_paths: list[list[int]] = field(default_factory=list)
    """Every correct path found, preferred first."""
    simulations: int = 0
    """MCTS simulations run."""
    evaluations: int = 0
    """Distinct paths whose reward was requested, the root included."""
    scoring: str | None = None
    """Reward used (``mc-loglik``, ``teacher-forced``, ...)."""
    style: str | None = None
    """Prompt style (``plain`` or ``chat``)."""
    num_layers: int | None = None
    """Decoder layers of the model, ``len(decisions)``."""
    supervision: dict | None = None
    """Continuous scores and label reliability (see ``drllm.search.runner``): ``base_margin``, ``margin``
    of the chosen path, ``margin_gain`` (best margin reached minus the base's), ``sweep`` (margins of
    every single-layer skip and repeat), ``evaluated`` (every path the search scored: path, reward,
    margin), ``safe_paths``, and with the controls ``control`` (the wrong-gold search) and ``seeds``."""
    settings: dict | None = None
    """What else made the record (see :class:`SearchSettings`): ``split``, ``simulations`` asked for,
    ``seed``, and the model's ``fingerprint`` and ``weight_probe``; None in rows of older files."""
    extra: dict = field(default_factory=dict)
    """Keys of the row that this version does not know, kept as read."""

    def __post_init__(self) -> None:
        if self.layers is None:
            self.layers = sum(d if d < 3 else 0.5 for d in self.decisions)

    def to_dict(self) -> dict:
        """The row as written: every field, then the unknown keys read with it."""
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**row, **{k: v for k, v in self.extra.items() if k not in row}}

    def to_json(self) -> str:
        """The row as one JSON line (without the newline)."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, row, where: str = "", num_layers: int | None = None) -> SearchRecord:
        """Check a decoded JSON row and build its record (an integer id becomes a string).

        Args:
            row: the decoded JSON value of one line.
            where: prefix of error messages (``"paths.jsonl line 3"``).
            num_layers: when given, ``decisions`` must have exactly this many values.

        Raises:
            ValueError: naming ``where`` and the key, for a missing key or a value of the wrong type.
        """
        at = f"{where}: " if where else ""
        if not isinstance(row, dict):
            raise ValueError(f"{at}expected a JSON object, got {type(row).__name__}")
        missing = [key for key in REQUIRED_KEYS if key not in row]
        if missing:
            raise ValueError(f"{at}missing key(s) {missing}; each row needs {list(REQUIRED_KEYS)}")
        known = {k: row[k] for k in _KNOWN_KEYS if k in row}
        extra = {k: v for k, v in row.items() if k not in known}
        decisions = validate_path(row["decisions"], num_layers, where)
        values = {
            "id": _id(row["id"], at),
            "prompt": _text(row["prompt"], "prompt", at, empty=False),
            "decisions": decisions,
            "correct_paths": _paths(known.get("correct_paths", []), len(decisions), where),
            "num_layers": _count(known.get("num_layers"), "num_layers", at),
        }
        for key in ("task", "model", "target"):
            values[key] = _text(known.get(key, ""), key, at)
        for key in ("scoring", "style"):
            values[key] = None if known.get(key) is None else _text(known[key], key, at)
        for key in ("simulations", "evaluations"):
            values[key] = _count(known.get(key, 0), key, at)
        values["layers"] = _layers(known.get("layers"), decisions, at)
        for key in ("reward", "base_reward"):
            values[key] = _number(known.get(key), key, at)
        values["supervision"] = check_supervision(known.get("supervision"), len(decisions), at)
        settings = known.get("settings")
        if settings is not None and not isinstance(settings, dict):
            raise ValueError(f"{at}settings must be a JSON object, got {type(settings).__name__}")
        values["settings"] = settings
        if values["num_layers"] is not None and values["num_layers"] != len(decisions):
            raise ValueError(
                f"{at}num_layers is {values['num_layers']}, but decisions has {len(decisions)} values"
            )
        return cls(**values, extra=extra)


_KNOWN_KEYS = tuple(f.name for f in dataclasses.fields(SearchRecord) if f.name != "extra")


@dataclass
class _Scan:
    """What a search output file holds: its records and the state of its last line."""

    records: list[SearchRecord]
    complete: int
    """Bytes up to and including the last newline."""
    torn: bool
    """The bytes after ``complete`` are a torn row (dropped with a warning)."""


def _scan(path: Path, num_layers: int | None = None) -> _Scan:
    """Check every line of an existing file; the torn last line, if any, is reported, not refused."""
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    lines = data[:complete].split(b"\n")[:-1]
    tail = data[complete:]
    records, seen, torn, tasks = [], {}, False, {}
    for number, raw in enumerate([*lines, tail] if tail else lines, start=1):
        if not raw.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(raw.decode("utf-8"))
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if number > len(lines):
                warnings.warn(
                    f"{where}: dropping a torn last line ({len(tail)} bytes, no trailing newline, "
                    "not valid JSON) left by an interrupted search",
                    stacklevel=3,
                )
                torn = True
                continue
            raise ValueError(f"{where}: malformed JSON ({err})") from err
        record = SearchRecord.from_dict(row, where, num_layers)
        if record.task not in tasks:
            tasks[record.task] = _task_key(record.task)
        key = (tasks[record.task], record.id)  # paths of two tasks may share ids (both have q0)
        if key in seen:
            of = f" of task {record.task!r}" if record.task else ""
            raise ValueError(f"{where}: duplicate id {record.id!r}{of} (first on line {seen[key]})")
        seen[key] = number
        records.append(record)
    return _Scan(records, complete, torn)


def _task_key(task: str) -> str:
    """One name per task: a ``jsonl:`` file under any spelling is named by its resolved path."""
    path = Path(task.removeprefix("jsonl:")).expanduser()
    return f"jsonl:{path.resolve()}" if task.startswith("jsonl:") and path.is_file() else task


def read_records(
    path: str | os.PathLike, num_layers: int | None = None, allow_empty: bool = False
) -> list[SearchRecord]:
    """Read and check a search output file.

    Args:
        path: JSONL file written by the search.
        num_layers: when given, every ``decisions`` must have exactly this many values.
        allow_empty: a missing or empty file gives ``[]`` instead of an error.

    Returns:
        The records in file order (a torn last line is dropped with a warning).

    Raises:
        FileNotFoundError: when the file does not exist (unless ``allow_empty``).
        ValueError: naming the file and line, for malformed JSON, a missing key, a value of the wrong
            type, bad decisions, a wrong number of layers or a duplicate id; or when the file holds no
            rows (unless ``allow_empty``).
    """
    path = Path(path)
    if not path.exists():
        if allow_empty:
            return []
        raise FileNotFoundError(f"search output {path} does not exist")
    records = _scan(path, num_layers).records
    if not records and not allow_empty:
        raise ValueError(f"search output {path} holds no rows")
    return records


def finished_ids(path: str | os.PathLike) -> set[str]:
    """Ids of the examples already in an output file (none when it does not exist)."""
    return {r.id for r in read_records(path, allow_empty=True)}


class SearchOutput:
    """Append-only writer of search records, holding an exclusive lock on ``<file>.lock``.

    With ``settings`` every record already in the file must share them (``SettingsMismatchError``
    otherwise) and each new record is stamped with them; ``restart`` first sets an existing file aside.

    Attributes:
        done: ids of the examples in the file, those written through this writer included.
    """

    def __init__(
        self, path: str | os.PathLike, settings: SearchSettings | None = None, restart: bool = False
    ):
        self.path, self.settings = Path(path), settings
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # the lock sits beside the file itself: two names of one file (a symlink) share it
        self._lock = filelock.FileLock(f"{self.path.resolve()}.lock", timeout=0)
        held = (
            f"{self.path} is being written by another search (lock {self._lock.lock_file} is held); "
            "wait for it to finish or choose another --output"
        )
        _acquire(self._lock, self.path, held)
        self.records: dict[str, SearchRecord] = {}
        try:
            if restart:
                set_aside(self.path)
            self.done = self._open_existing()
        except BaseException:
            self._unlock()  # a refusal leaves no lock file behind
            raise
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _open_existing(self) -> set[str]:
        """Check every complete line before changing anything, then mend the last line."""
        if not self.path.exists():
            return set()
        try:
            scan = _scan(self.path)
        except ValueError as err:
            raise ValueError(f"{err}; refusing to append to {self.path}") from err
        self.records = {r.id: r for r in scan.records}
        if self.settings is not None:
            self.settings.check(scan.records, self.path)
        size = self.path.stat().st_size
        if scan.complete < size:
            with open(self.path, "r+b") as f:
                if scan.torn:  # the crash came in the middle of the row: cut it off
                    f.truncate(scan.complete)
                else:  # the crash came between the row and its newline: the row is whole
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
        return {r.id for r in scan.records}

    def write(self, record: SearchRecord) -> None:
        """Append one record as a single line, flushed to disk."""
        if record.id in self.done:
            raise ValueError(f"{self.path} already holds example {record.id!r}")
        if self.settings is not None:
            record = self.settings.stamp(record)
        line = (record.to_json() + "\n").encode("utf-8")
        try:
            written = os.write(self._fd, line)
            if written != len(line):  # the disk filled up in the middle of the line
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)")
            os.fsync(self._fd)
        except OSError as err:
            raise OSError(
                err.errno,
                f"{err.strerror or err} while appending example {record.id!r} to {self.path}; the "
                f"{len(self.done)} example(s) written before are kept, and the same command continues "
                "after them once the problem is fixed",
            ) from err
        self.done.add(record.id)

    def close(self) -> None:
        """Release the file and the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._unlock()

    def _unlock(self) -> None:
        """Remove the lock file while still holding it, then release it: no lock file lingers."""
        Path(self._lock.lock_file).unlink(missing_ok=True)
        self._lock.release()

    def __enter__(self) -> SearchOutput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
