"""Sharding a search over processes launched by ``torchrun`` (one per GPU, or several CPU processes).

Rank r of N searches the examples ``r, r + N, r + 2N, ...`` that the main output does not hold yet and
writes them to its own file ``<output>.rank<r>-of-<N>`` (resumable on its own). When every rank is done
(a ``torch.distributed`` barrier over gloo), rank 0 appends the rank files' rows to the main output and
removes them. Each tree is seeded from (seed, example id), so the merged file holds the same paths as a
single-process search. On several machines, ``torchrun --nnodes M --node-rank K --rdzv-endpoint HOST:PORT``
launches the same command; the output folder must then be shared (NFS, ...).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .records import SearchOutput, finished_ids, read_records


def rank_info() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` from the variables torchrun sets; ``(0, 1, 0)`` otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def rank_output(output: str | os.PathLike, rank: int, world: int) -> Path:
    """The file rank ``rank`` of ``world`` writes."""
    return Path(f"{output}.rank{rank}-of-{world}")


def shard(examples: list, output: str | os.PathLike, rank: int, world: int) -> list:
    """This rank's examples: every ``world``-th one, less those the main output already holds."""
    done = finished_ids(output)
    return [ex for i, ex in enumerate(examples) if i % world == rank and str(ex.id) not in done]


def barrier() -> None:
    """Wait for every rank (gloo process group from torchrun's environment)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()


def merge(output: str | os.PathLike, world: int) -> int:
    """Append the records of every rank file that the main output lacks, then remove the rank files."""
    added = 0
    with SearchOutput(output) as out:
        for rank in range(world):
            for record in read_records(rank_output(output, rank, world), allow_empty=True):
                if record.id not in out.done:
                    out.write(record)
                    added += 1
        for rank in range(world):
            for path in (rank_output(output, rank, world), Path(f"{rank_output(output, rank, world)}.lock")):
                path.unlink(missing_ok=True)
    return added


LAUNCHED = "DRLLM_SHARDED_CHILD"
"""Set in the processes ``launch`` starts: their rank 0 leaves the summary to the launching process."""


def launch_sharded(devices: int, arguments: dict) -> None:
    """Run ``drllm search`` with ``arguments`` (``run_search``'s) in ``devices`` torchrun processes.

    The ranks print nothing: the launching process reports the merged output.

    Raises:
        ValueError: when an argument is a Python object that cannot travel on a command line.
        RuntimeError: when a process fails.
    """
    flags = []
    for key, value in arguments.items():
        if key == "devices" or value is None:
            continue
        if not isinstance(value, (str, int, float, bool, os.PathLike)):
            raise ValueError(
                f"a search over {devices} processes takes its model by name or folder, not a "
                f"{type(value).__name__} ({key})"
            )
        flags.append(f"--{key}={value}")
    code = launch(devices, ["search", *flags])
    if code:
        raise RuntimeError(f"the sharded search failed (exit code {code})")


def launch(devices: int, argv: list[str]) -> int:
    """Run ``drllm <argv>`` in ``devices`` processes under torchrun; returns its exit code."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={devices}",
        "-m",
        "drllm.cli",
        *argv,
    ]
    return subprocess.run(cmd, check=False, env={**os.environ, LAUNCHED: "1"}).returncode
