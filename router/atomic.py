"""One way to write a file so that a reader sees the old file or the new one, never half of one.

    atomic_write(path, lambda tmp: save_file(state, tmp))   # any writer that takes a path
    atomic_write_text(path, text)
    with files_together(folder) as stage: ...   # several files: all written before any is moved in

The writer fills a temporary file beside ``path`` (same folder, so same file system), which is flushed to
disk and then moved over ``path`` with ``os.replace``; on any error the temporary file is removed and the
old file stays. The new file gets the permissions a plain ``open(path, "w")`` would give it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)``, then move the finished file over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    atomic_write(path, write)


@contextmanager
def files_together(folder: str | os.PathLike) -> Iterator[Path]:
    """A staging folder inside ``folder``: what the block writes there is moved into ``folder`` at the end.

    Every file is written before the first one is moved, so a failure while writing (a full disk) leaves
    ``folder`` exactly as it was; the staging folder is removed either way.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=folder, prefix=".saving-"))
    try:
        yield stage
        for item in sorted(stage.iterdir()):
            os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
