"""The package as a user meets it: a version, ``python -m drllm``, a licence, the names at the top."""

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import drllm

ROOT = Path(__file__).resolve().parents[1]


def test_version_and_top_level_names():
    assert drllm.__version__ == metadata.version("drllm")
    from drllm.router import RoutedModel

    assert drllm.RoutedModel is RoutedModel


def test_python_dash_m_drllm_runs_the_command():
    out = subprocess.run([sys.executable, "-m", "drllm", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"drllm {drllm.__version__}"


def test_a_licence_ships_and_the_extras_are_declared():
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    extras = metadata.metadata("drllm").get_all("Provides-Extra")
    assert {"peft", "lmeval", "train", "eval"} <= set(extras)
