"""The output folder of a router training: its lock, the checkpoints' identity, and the finished files.

    <output>/train.lock           held while a run writes the folder (removed on release)
    <output>/checkpoints/         the training state: run.json (the identity it was made with), last.ckpt
                                  and the best epoch's checkpoint
    <output>/.incoming-<pid>/     the finished files, before they are published
    <output>/versions/v<N>/       each published run's routers, metrics, settings and figure
    <output>/current              a symlink to the published version: switching it publishes a run
    <output>/router_config.json, routers.safetensors, metrics.json, run.json, decisions.png, ...
                                  symlinks through current: what loaders and readers open

A run only writes its checkpoints after recording their identity beside them, so a later resume can
never adopt another run's checkpoint; it publishes by switching one symlink, so a failed or killed run
leaves the previous routers whole, and a reader never sees files of two runs together.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import zipfile
from contextlib import contextmanager
from pathlib import Path

from drllm.router.atomic import atomic_write_text
from drllm.search.records import OutputLockedError, folder_lock  # noqa: F401 - OutputLockedError is raised here

LOCK_NAME = "train.lock"
IDENTITY_NAME = "run.json"
STAGING_PREFIX = ".incoming-"
VERSIONS_NAME, CURRENT_NAME = "versions", "current"
IDENTITY_DEFAULTS = {
    "targets": "hard",
    "safe_margin": 0.0,
    "router": "mlp",
    "control": "none",
    "read_layer": None,
}
"""Identity keys newer than some checkpoints, with the value those checkpoints were trained with."""


def is_leader() -> bool:
    """Whether this process is rank 0 (or alone): the one that locks the folder and writes its files.

    Lightning's DDP launcher starts the other ranks as copies of this script with ``LOCAL_RANK`` set;
    ``torchrun`` sets ``RANK``.
    """
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


@contextmanager
def locked(output: Path):
    """Hold ``<output>/train.lock`` for the block; refuse, naming the lock, when another run holds it."""
    with folder_lock(output, LOCK_NAME, "training run"):
        for stale in output.glob(f"{STAGING_PREFIX}*"):  # left by a killed run: no other run is writing
            shutil.rmtree(stale, ignore_errors=True)
        yield


def disk_full(err: BaseException, where: Path) -> bool:
    """Whether ``err`` (or an error it came from) means the disk under ``where`` is full.

    torch and safetensors report a full disk in their own exception types, sometimes with no errno (a
    failed ``torch.save`` says only "unexpected pos"), so the free space left under ``where`` decides too.
    """
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(seen) or "os error 28" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(where).free < 1 << 20
    except OSError:
        return False


@contextmanager
def disk_errors(output: Path):
    """Turn a full disk met while the block writes into one ``OSError(ENOSPC)`` that says what is kept."""
    try:
        yield
    except Exception as err:
        if not isinstance(err, (OSError, RuntimeError)) and type(err).__name__ != "SafetensorError":
            raise
        if not disk_full(err, output):
            raise
        raise OSError(
            errno.ENOSPC,
            f"no space left on the device of {output} while training wrote its files; the routers "
            "published there before are unchanged; free some space and rerun (the last checkpoint, if "
            "one was written whole, lets --resume continue)",
        ) from err


def write_json(path: Path, value: dict) -> None:
    """Write ``value`` as JSON through a temporary file, so a reader sees the old file or the new one."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_run_record(record: Path) -> dict:
    """The identity a checkpoint was trained with (``run.json``); a damaged record is refused by name."""
    try:
        saved = json.loads(record.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        saved, problem = None, str(err)
    else:
        problem = "not a JSON object"
    if not isinstance(saved, dict):
        raise ValueError(
            f"{record} is damaged ({problem}), so the checkpoint beside it cannot be checked; "
            "use another --output or --resume false to start over"
        )
    return saved


def check_resume(record: Path, run: dict, resuming: bool) -> None:
    """Refuse to resume a checkpoint made from other paths or settings; record this run's identity."""
    if resuming and record.is_file():
        saved = read_run_record(record)
        if "hidden_size" in saved and "bottleneck" not in saved:  # records before the rename
            saved["bottleneck"] = saved.pop("hidden_size")
        saved = {**IDENTITY_DEFAULTS, **saved}  # keys added later take the value older runs had
        differ = {k: (saved.get(k), v) for k, v in run.items() if saved.get(k) != v}
        if differ:
            details = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise ValueError(
                f"the checkpoint recorded in {record} was trained with other inputs ({details}); "
                "use another --output or --resume false to start over"
            )
    write_json(record, run)


def prepare_checkpoints(folder: Path, run: dict, resume: bool, leader: bool) -> bool:
    """Make ``folder`` hold only checkpoints of this run; True when training resumes from ``last.ckpt``.

    Resuming needs ``last.ckpt`` and, beside it, a ``run.json`` equal to ``run``. Otherwise the folder is
    emptied and ``run.json`` written before any checkpoint is. Only the leader writes.
    """
    last, record = folder / "last.ckpt", folder / IDENTITY_NAME
    resuming = resume and last.is_file()
    if not leader:
        return resuming
    if resuming:
        if not record.is_file():
            raise ValueError(
                f"{last} has no {IDENTITY_NAME} beside it (an older drllm wrote it), so it cannot be "
                "checked; use --resume false to start over (the finished routers stay until the new run ends)"
            )
        check_resume(record, run, resuming=True)
        if not zipfile.is_zipfile(last):  # torch.save writes a zip archive; a torn one has no directory
            raise ValueError(
                f"{last} is damaged (not a whole checkpoint: an interrupted write or a full disk); use "
                "--resume false to start over (the finished routers stay until the new run ends)"
            )
        return True
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_json(record, run)
    return False


def load_checkpoint(path: Path) -> dict:
    """A training checkpoint, unpickling only tensors and plain values: a planted object is never run.

    Raises:
        ValueError: naming the file, when it holds anything else (or is not a checkpoint at all).
    """
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path} is not a checkpoint drllm wrote (it would not load as tensors and plain values: "
            f"{first}); nothing was run from it: delete it, or pass --resume false to start over"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a checkpoint drllm wrote (it holds a {type(state).__name__})")
    return state


def check_epochs(last: Path, epochs: int) -> None:
    """Refuse to resume ``last`` with fewer epochs in all than it has already run (Lightning cannot)."""
    index = load_checkpoint(last).get("epoch")  # of the last epoch run
    done = index + 1 if isinstance(index, int) else 0
    if done > epochs:
        raise ValueError(
            f"{last} has already run {done} epochs, more than --epochs {epochs} (the epochs in all, counting "
            f"those done): pass --epochs {done} or more to continue, or --resume false to start over"
        )


def staging(output: Path) -> Path:
    """An empty folder for this process's finished files (see :func:`publish`)."""
    folder = output / f"{STAGING_PREFIX}{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def publish(folder: Path, output: Path) -> None:
    """Make the finished files of ``folder`` the published ones, in one atomic switch.

    ``folder`` becomes ``<output>/versions/v<N>``; then the one symlink ``<output>/current`` is switched to it
    (``os.replace``). The published names at the top of ``<output>`` (``router_config.json``, ...) are
    symlinks through ``current``, made once, so a reader sees the whole old version or the whole new one,
    never new weights beside an old config. Versions older than the previous one are removed.
    """
    versions = output / VERSIONS_NAME
    versions.mkdir(exist_ok=True)
    taken = [int(p.name[1:]) for p in versions.glob("v*") if p.name[1:].isdigit()]
    version = versions / f"v{max(taken, default=0) + 1}"
    os.replace(folder, version)
    link = output / f".{CURRENT_NAME}.tmp-{os.getpid()}"
    link.unlink(missing_ok=True)
    link.symlink_to(Path(VERSIONS_NAME) / version.name)
    previous = (output / CURRENT_NAME).resolve() if (output / CURRENT_NAME).is_symlink() else None
    try:
        os.replace(link, output / CURRENT_NAME)  # the switch
    finally:
        link.unlink(missing_ok=True)  # left only when the switch failed
    names = {p.name for p in version.iterdir()}
    for name in names:
        _link_through_current(output, name)
    for entry in output.iterdir():  # a published name the new version lacks would dangle
        if entry.is_symlink() and entry.name != CURRENT_NAME and entry.name not in names:
            if os.readlink(entry) == str(Path(CURRENT_NAME) / entry.name):
                entry.unlink()
    keep = {version.resolve(), previous}
    for old in versions.iterdir():
        if old.resolve() not in keep:
            shutil.rmtree(old, ignore_errors=True)


def _link_through_current(output: Path, name: str) -> None:
    """``<output>/<name>`` -> ``current/<name>`` (replacing a plain file left by an older drllm)."""
    target = Path(CURRENT_NAME) / name
    entry = output / name
    if entry.is_symlink() and os.readlink(entry) == str(target):
        return
    tmp = output / f".{name}.link-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    os.replace(tmp, entry)


def trained_key(task: str, example_id: str) -> str:
    """An example's key in ``trained_on.json``: ``task/id``, a ``jsonl:`` file named by its absolute path.

    Eval then recognises the training examples from any working directory and under any spelling of the file.
    """
    if task.startswith("jsonl:"):
        task = "jsonl:" + str(Path(task[len("jsonl:") :]).expanduser().resolve())
    return f"{task}/{example_id}"
