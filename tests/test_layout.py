"""Imports run one way: router <- search <- train; evaluation imports router and search; cli imports all."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "router": {"router"},
    "search": {"router", "search"},
    "train": {"router", "search", "train", "evaluation.plots", "evaluation.stats"},
    "evaluation": {"router", "search", "evaluation"},
    "cli": {"router", "search", "train", "evaluation", "cli"},
}
THIRD_PARTY_ROUTER = {"torch", "transformers", "safetensors"}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level >= 2:
            package = path.parent.relative_to(ROOT).parts[: -(node.level - 1)]
            found.append("drllm." + ".".join((*package, node.module or "")).strip("."))
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_run_one_way(package):
    bad = []
    for path in (ROOT / package).rglob("*.py"):
        for name in _imports(path):
            if name.startswith("drllm."):
                target = name.removeprefix("drllm.")
                if not any(target == a or target.startswith(a + ".") for a in ALLOWED[package]):
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
            elif package == "router":
                top = name.split(".")[0]
                std = top in __import__("sys").stdlib_module_names
                if not std and top not in THIRD_PARTY_ROUTER:
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, bad
