"""Publishing an evaluation's files together: written aside in a staging folder, then moved in.

A rerun replaces every file an evaluation writes and removes the ones it no longer writes (``routers-at-<n>``
of a level not evaluated now, ``verdict.md`` without ``routed-static``), so no stale result survives beside
new ones. A failure while writing (a full disk, a kill) happens in the staging folder and leaves the
published files as they were; the error names the file. Moving in is one ``os.replace`` per entry.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

STAGING_PREFIX = ".staging-"
OWNED = ("results.md", "results.json", "examples.jsonl", "decisions.json", "tradeoff.png", "decisions.png",
         "verdict.md")  # fmt: skip
OWNED_PREFIXES = ("routers-at-",)


def owned(name: str, entry: Path | None = None) -> bool:
    """Whether an evaluation writes entries of this name (and may therefore remove a stale one).

    With ``entry``, a task folder of an earlier evaluation of several tasks (a folder holding both
    ``results.json`` and ``examples.jsonl``) is the evaluation's too.
    """
    if name in OWNED or name.startswith(OWNED_PREFIXES):
        return True
    return (
        entry is not None
        and not name.startswith(".")  # a staging folder (this run's own) or a user's hidden one
        and entry.is_dir()
        and not entry.is_symlink()
        and (entry / "results.json").is_file()
        and (entry / "examples.jsonl").is_file()
    )


ROUTER_FILES = ("router_config.json", "routers.safetensors", "current", "versions")
"""What a router folder (``save_pretrained`` or ``drllm train``) holds; an evaluation never writes there."""


def refuse_router_folder(folder: str | os.PathLike) -> None:
    """Refuse an evaluation output that is a router folder (its own files would be replaced)."""
    found = [name for name in ROUTER_FILES if os.path.lexists(Path(folder) / name)]
    if found:
        raise ValueError(
            f"output {folder} is a router folder (it holds {', '.join(found)}); an evaluation there would "
            "replace the routers' own files: choose another --output"
        )


@contextlib.contextmanager
def staged(folder: Path) -> Iterator[Path]:
    """A fresh staging folder inside ``folder``; on success its entries replace ``folder``'s own.

    Raises:
        OSError: naming the file, when the disk fills while writing (the published files are kept).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"{STAGING_PREFIX}*"):  # left by a killed run (eval.lock is held: no one writes)
        shutil.rmtree(old, ignore_errors=True)
    stage = folder / f"{STAGING_PREFIX}{os.getpid()}"
    stage.mkdir()
    try:
        yield stage
    except OSError as err:
        shutil.rmtree(stage, ignore_errors=True)
        if err.errno == errno.ENOSPC:
            where = err.filename or "a result file"
            raise OSError(
                errno.ENOSPC, f"no space left while writing {where}; the earlier results in {folder} are kept"
            ) from err
        raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    new = {p.name for p in stage.iterdir()}
    stale = [entry for entry in folder.iterdir() if owned(entry.name, entry) and entry.name not in new]
    if stale or any((folder / name).exists() for name in new):
        removed = ", ".join(sorted(e.name for e in stale))
        logging.getLogger("drllm.evaluation.evaluate").warning(
            "%s: replacing the earlier evaluation there%s",
            folder,
            f" (removing {removed}, which this run does not make)" if stale else "",
        )
    for entry in stale:
        _remove(entry)
    for name in sorted(new, key=lambda n: n != "results.json"):  # results.json first: the rest follow it
        target = folder / name
        if target.is_dir() and not target.is_symlink():
            _remove(target)
        os.replace(stage / name, target)
    stage.rmdir()


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()
