"""Read what an offline W&B run recorded, once the W&B service has written it out."""

import time
from pathlib import Path


def offline_record(pattern_root: Path, glob: str, needles: list[bytes], timeout: float = 60.0) -> bytes:
    """The bytes of the single ``run-*.wandb`` file under ``pattern_root`` matching ``glob``.

    ``run.finish()`` hands the last records to the W&B service, which writes the file on its own
    schedule; on a loaded machine the file can still hold only its 7-byte header when ``finish``
    returns. Shut the service down (it flushes on exit) and wait until every needle is present.
    """
    import wandb

    wandb.teardown()
    deadline = time.monotonic() + timeout
    while True:
        (record,) = pattern_root.glob(glob)
        data = record.read_bytes()
        if all(n in data for n in needles) or time.monotonic() > deadline:
            return data
        time.sleep(0.2)
