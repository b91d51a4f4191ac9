"""Where searches, evaluations and trainings write.

Checking an output before a model loads, setting an old file aside, refusing records searched with another
model, and the locks that keep two writers out of one output.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import filelock

from drllm.router.fingerprint import probe_mismatch


def set_aside(path: Path) -> Path | None:
    """Move a file to ``<file>.old-<timestamp>`` (never over another file); None when it does not exist.

    Through a symbolic link the file it points to is set aside, beside itself, and the link is kept: the
    new file is then written where the link points, and both names keep naming one file (and one lock).
    """
    if not path.exists():
        return None
    path = path.resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = Path(f"{path}.old-{stamp}"), 1
    while target.exists():
        target, n = Path(f"{path}.old-{stamp}-{n}"), n + 1
    os.rename(path, target)
    return target


def check_searched_with(records: list, routed, source) -> None:
    """Refuse records whose settings say they were searched with another model than ``routed``.

    Fingerprint or weights differ: the error names the example and both values. Records without settings
    pass.
    """
    for row in records:
        saved = row.settings or {}
        fingerprint, probe = saved.get("fingerprint"), saved.get("weight_probe")
        if fingerprint and fingerprint != routed.fingerprint:
            raise ValueError(
                f"{source}: example {row.id!r} was searched with model {row.model!r} of fingerprint "
                f"{fingerprint}, this model has fingerprint {routed.fingerprint}"
            )
        if isinstance(probe, list) and probe and probe_mismatch(probe, routed.weight_probe):
            raise ValueError(
                f"{source}: example {row.id!r} was searched with model {row.model!r} of weight fingerprint "
                f"{probe}, this model has {routed.weight_probe}"
            )


def check_block_paths(
    records: list, source, reader: str = "routers choose skip, execute or repeat per block"
) -> None:
    """Refuse paths of a ``--units sublayer`` search (decisions 3 and 4) where only block paths are read.

    ``reader`` says why, in the message.
    """
    for row in records:
        units = sorted({d for path in (row.decisions, *row.correct_paths) for d in path if d >= 3})
        if units:
            raise ValueError(
                f"{source}: example {row.id!r} holds sublayer decisions {units} (3: MLP alone, 4: attention "
                f"alone) from a --units sublayer search; {reader}, so they cannot use these paths: pass "
                "the paths of a --units block search"
            )


@contextlib.contextmanager
def claimed_output(path: str | os.PathLike, folder: bool = False):
    """``check_output`` for a block; when the block raises, the folders it created, if still empty, go.

    A refusal after the output was checked (a bad argument only the loaded model can judge) then leaves
    nothing behind.
    """
    if not str(path).strip():
        raise ValueError("the output path is empty")
    where = Path(path) if folder else Path(path).parent
    created = [p for p in [where, *where.parents] if not p.exists()]  # deepest first
    checked = check_output(path, folder)
    try:
        yield checked
    except BaseException:
        _remove_empty(created)
        raise


def check_output(path: str | os.PathLike, folder: bool = False) -> Path:
    """Check, before any model loads, that an output can be written.

    Its folder exists (or is created) and is writable, and the path is a file (with ``folder``, a folder)
    where it exists.

    Raises:
        ValueError: naming the path and what is in the way.
    """
    if not str(path).strip():  # an unset variable in quotes: never the current folder by accident
        raise ValueError("the output path is empty")
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ValueError(f"output {path} is a symbolic link to {os.readlink(path)}, which does not exist")
    where = path if folder else path.parent
    if path.exists() and path.is_dir() != folder:
        found, wanted = ("file", "folder") if folder else ("folder", "file")
        raise ValueError(f"output {path} is a {found}; expected a {wanted}")
    if path.exists() and not folder and not path.is_file():
        raise ValueError(f"output {path} is not a regular file (a device or a pipe); expected a file")
    blocker = next((p for p in [where, *where.parents] if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ValueError(f"output {path} cannot be created: {blocker} is a file")
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"output {path} cannot be created: {err.strerror}") from err
    if not os.access(where, os.W_OK):
        raise ValueError(f"output {path} cannot be written: {where} is read-only")
    check_writable(where, path)
    return path


def check_writable(folder: Path, output) -> None:
    """Refuse a folder no file can be created in (``os.access`` trusts root; a test file does not).

    Raises:
        ValueError: naming ``output``, ``folder`` and the system's reason.
    """
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".drllm-write-test-")
    except OSError as err:
        raise ValueError(
            f"output {output} cannot be written: no file can be created in {folder} "
            f"({err.strerror or err}); choose another --output"
        ) from None
    os.close(fd)
    os.unlink(name)


def _acquire(lock: filelock.FileLock, output, held: str) -> None:
    """Take ``lock`` at once; ``OutputLockedError(held)`` only when another process really holds it.

    filelock reports a lock file it cannot create (a folder where nothing can be written) as held.
    """
    try:
        lock.acquire()
    except filelock.Timeout as err:
        if not os.path.lexists(lock.lock_file):  # nobody holds a lock that does not exist
            raise ValueError(
                f"output {output} cannot be written: its lock {lock.lock_file} cannot be created; "
                "choose another --output"
            ) from None
        raise OutputLockedError(held) from err


class OutputLockedError(RuntimeError):
    """Another process holds the output file."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, name: str, what: str):
    """Hold ``<folder>/<name>`` (the folder resolved: a symlinked name shares it) for the block.

    Raises:
        OutputLockedError: naming the lock, when another process holds it.
    """
    real = Path(folder).resolve()
    created = [p for p in [real, *real.parents] if not p.exists()]  # deepest first
    try:
        real.mkdir(parents=True, exist_ok=True)
        check_writable(real, folder)
    except (OSError, ValueError) as err:
        _remove_empty(created)
        if isinstance(err, ValueError):
            raise
        raise ValueError(f"output {folder} cannot be created: {err.strerror or err}") from None
    lock = filelock.FileLock(str(real / name), timeout=0)
    held = (
        f"{folder} is being written by another {what} (lock {lock.lock_file} is held); wait for it to "
        "finish or choose another --output"
    )
    _acquire(lock, folder, held)
    try:
        yield
    except BaseException:
        _unlock(lock)
        _remove_empty(created)  # a refusal inside the block leaves no empty output folder behind
        raise
    _unlock(lock)


def _unlock(lock) -> None:
    """Remove the lock file while holding it, then release it."""
    Path(lock.lock_file).unlink(missing_ok=True)
    lock.release()


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders in ``created`` (deepest first) while they are empty."""
    for p in created:
        try:
            p.rmdir()
        except OSError:  # not empty (or gone): keep it and everything above it
            break
