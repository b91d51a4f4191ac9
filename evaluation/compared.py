"""More router folders in one evaluation (``compare_routers``), each judged on the same examples.

Every folder is loaded and checked against the model before anything runs; its routers and stand-ins are
kept aside and attached only while its own methods are calibrated and scored (``RoutedModel.attach_routers``).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


def compared_labels(folders, routers: str | None) -> dict[str, str]:
    """``{label: folder}`` with the folder's name as its label; a repeated name or folder is refused."""
    out: dict[str, str] = {}
    seen = {str(Path(routers).resolve())} if routers else set()
    for folder in folders:
        label, where = Path(folder).name, str(Path(folder).resolve())
        if where in seen:
            raise ValueError(f"router folder {folder!r} is given twice (as --routers or --compare-routers)")
        if label in out:
            raise ValueError(
                f"router folders {out[label]!r} and {folder!r} share the name {label!r}, which labels their "
                "rows: give them distinct folder names"
            )
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"--compare-routers: {folder!r} is not a folder of saved routers")
        seen.add(where)
        out[label] = str(folder)
    return out


def load_compared(routed, folders: dict[str, str]) -> dict[str, tuple]:
    """``{label: (routers, stand-ins)}`` for each folder, the model's own routers attached again after."""
    kept, loaded = (routed.routers, routed.stand_ins), {}
    try:
        for label, folder in folders.items():
            routed.load_routers(folder)  # checks the folder against the model, stand-ins too
            loaded[label] = (routed.routers, routed.stand_ins)
    finally:
        routed.attach_routers(*kept)
    return loaded


@contextmanager
def attached(routed, routers, stand_ins):
    """Run the block with ``routers`` and ``stand_ins`` attached, then the model's own again."""
    kept = (routed.routers, routed.stand_ins)
    routed.attach_routers(routers, stand_ins)
    try:
        yield
    finally:
        routed.attach_routers(*kept)
