"""The search output file: one JSON line per example, appended and flushed as each example finishes.

Crash safety: each line is written with one ``write`` on a file opened for appending, then flushed and
fsynced. A crash can leave at most a torn last line (no trailing newline); ``open_output`` detects it,
warns, and cuts it off before appending, so a resumed search never duplicates or corrupts an example.
A lock file keeps two searches from writing the same output.
"""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from pathlib import Path

FIELDS = (
    "id",
    "task",
    "model",
    "prompt",
    "target",
    "decisions",
    "layers",
    "reward",
    "base_reward",
    "correct_paths",
    "simulations",
)


class OutputLockedError(RuntimeError):
    """Another process holds the output file."""


def finished_ids(path: str | os.PathLike) -> set[str]:
    """Ids of the examples already in an output file (a torn last line is not counted)."""
    path = Path(path)
    if not path.exists():
        return set()
    done = set()
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    for number, line in enumerate(complete.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path} line {number} is not valid JSON ({err}); refusing to append to it"
            ) from err
        if not isinstance(row, dict) or "id" not in row:
            raise ValueError(f"{path} line {number} has no 'id'; refusing to append to it")
        done.add(str(row["id"]))
    return done


class SearchOutput:
    """Append-only writer for search results, holding an exclusive lock on ``<file>.lock``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path.with_name(self.path.name + ".lock"), "a")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            self._lock.close()
            raise OutputLockedError(
                f"{self.path} is being written by another search (lock {self._lock.name} is held); "
                "wait for it to finish or choose another --output"
            ) from err
        self._drop_torn_tail()
        self.done = finished_ids(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _drop_torn_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            warnings.warn(
                f"{self.path}: dropping a torn last line ({len(data) - keep} bytes) "
                "left by an interrupted search",
                stacklevel=3,
            )
            with open(self.path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())

    def write(self, row: dict) -> None:
        """Append one example's result as a single line, flushed to disk."""
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        written = os.write(self._fd, line)
        if written != len(line):
            raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
        os.fsync(self._fd)
        self.done.add(str(row["id"]))

    def close(self) -> None:
        """Release the file and the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()

    def __enter__(self) -> SearchOutput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_rows(path: str | os.PathLike) -> list[dict]:
    """All complete rows of an output file, in file order."""
    path = Path(path)
    data = path.read_bytes() if path.exists() else b""
    complete = data[: data.rfind(b"\n") + 1].decode("utf-8")
    return [json.loads(line) for line in complete.splitlines() if line.strip()]
