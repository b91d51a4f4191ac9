"""The search output file: one JSON line per example, appended and flushed as each example finishes.

Crash safety: each line is written with one ``write`` on a file opened for appending, then flushed and
fsynced. A crash can leave at most a torn last line (no trailing newline); ``SearchOutput`` detects it,
warns, and cuts it off before appending (or, when the line is a whole row missing only its newline,
completes it), so a resumed search never duplicates or corrupts an example. A file with a malformed
complete line is refused before anything in it is changed.
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
        try:
            self.done = finished_ids(self.path)  # validates every complete line before anything is changed
            self._mend_tail()
        except BaseException:
            self._release_lock()
            raise
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _mend_tail(self) -> None:
        """A last line without its newline: keep it if it is a whole row, else cut it off (with a warning)."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        keep = data.rfind(b"\n") + 1
        if keep == len(data):
            return
        row = _row_or_none(data[keep:])
        with open(self.path, "r+b") as f:
            if row is not None:  # the crash came between the row and its newline: the row is whole
                f.seek(0, os.SEEK_END)
                f.write(b"\n")
                self.done.add(str(row["id"]))
            else:
                warnings.warn(
                    f"{self.path}: dropping a torn last line ({len(data) - keep} bytes) "
                    "left by an interrupted search",
                    stacklevel=3,
                )
                f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())

    def _release_lock(self) -> None:
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()

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
        self._release_lock()

    def __enter__(self) -> SearchOutput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _row_or_none(line: bytes) -> dict | None:
    """The row a line holds, or None when it is not a JSON object with an id."""
    try:
        row = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return row if isinstance(row, dict) and "id" in row else None


def read_rows(path: str | os.PathLike) -> list[dict]:
    """All complete rows of an output file, in file order."""
    path = Path(path)
    data = path.read_bytes() if path.exists() else b""
    complete = data[: data.rfind(b"\n") + 1].decode("utf-8")
    return [json.loads(line) for line in complete.splitlines() if line.strip()]
