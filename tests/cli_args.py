"""Argument lists for ``drllm`` subcommands on a tiny model, shared by the CLI and resume tests."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUBPROCESS = [sys.executable, "-m", "drllm.cli"]  # prefix running the CLI in a fresh process


def search_args(model_dir, task_file, output, *extra, simulations: int = 3) -> list[str]:
    """``drllm search`` arguments on a tiny model and a jsonl task."""
    return [
        "search",
        "--model",
        str(model_dir),
        "--task",
        f"jsonl:{task_file}",
        "--output",
        str(output),
        "--simulations",
        str(simulations),
        *extra,
    ]


def train_args(model_dir, paths, output, *extra) -> list[str]:
    """``drllm train`` arguments with the tiny training config."""
    return [
        "train",
        "--model",
        str(model_dir),
        "--paths",
        str(paths),
        "--output",
        str(output),
        "--config",
        str(ROOT / "configs" / "train_tiny.yaml"),
        *extra,
    ]
