"""The README's two newcomer commands exist, and run in miniature."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_COMMAND = "bash .ci/setup && .venv/bin/drllm demo"
TEST_COMMAND = "bash .ci/run"


def _two_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_readme_gives_exactly_the_two_commands():
    assert _two_commands() == [DEMO_COMMAND, TEST_COMMAND]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/setup" in ci and "pytest" in ci


def test_setup_is_idempotent():
    out = subprocess.run(["bash", ".ci/setup"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "drllm ready" in out.stdout


@pytest.mark.slow
def test_demo_command_in_miniature(tmp_path):
    """The first README command with tiny sizes, on the real embedded model."""
    out = tmp_path / "demo"
    cmd = [
        str(ROOT / ".venv" / "bin" / "drllm"),
        "demo",
        "--config",
        str(ROOT / "configs" / "demo_tiny.yaml"),
        "--output",
        str(out),
    ]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    for name in (
        "paths.jsonl",
        "routers/routers.safetensors",
        "routers/router_config.json",
        "eval/results.json",
        "eval/results.md",
        "eval/tradeoff.png",
        "eval/decisions.png",
        "report.md",
    ):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "base" in report and "routed" in report
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert (out / "report.md").read_text() == report
