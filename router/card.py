"""The model card (``README.md``) beside saved routers: what they are, for which model, how to load them."""

from __future__ import annotations

import warnings
from pathlib import Path

from .atomic import atomic_write_text
from .routers import RouterConfig

CARD_NAME = "README.md"


def model_card(config: RouterConfig) -> str:
    """The card's Markdown for routers with ``config``."""
    base = config.base_model or "(not recorded)"
    path = "".join(map(str, config.default_path)) if config.default_path else "none (plain argmax)"
    lines = [
        "---",
        "library_name: drllm",
        *([f"base_model: {config.base_model}"] if config.base_model else []),
        "tags: [drllm, dynamic-depth, layer-routing]",
        "---",
        "",
        f"# drllm routers for {base}",
        "",
        "Per-layer routers that decide, once per prompt, to skip, execute or repeat each of the "
        f"{config.num_layers} decoder layers of the frozen base model (`{config.kind}` heads, "
        f"{config.num_windows} windows"
        + (f", reading layer {config.read_layer}" if config.read_layer is not None else "")
        + ").",
        "",
        "```python",
        "from drllm import load_routed",
        'routed = load_routed(routers="THIS_FOLDER")   # loads the base model recorded here',
        "out = routed.generate(input_ids, max_new_tokens=32)",
        "```",
        "",
        f"- Default path (deviations from it need confidence): {path}",
        f"- Protected layers: {config.protected or 'none'}",
        f"- Base model fingerprint: `{config.fingerprint or '(none)'}`",
    ]
    if config.verdict:
        lines += ["", "## Verdict of the evaluation that exported them", "", config.verdict]
    return "\n".join(lines) + "\n"


def write_model_card(directory: Path, config: RouterConfig, destination: Path | None = None) -> None:
    """Write ``README.md`` into ``directory`` (atomically), unless ``destination`` holds a user's own.

    A ``README.md`` already in ``destination`` (default: ``directory``) that is not a drllm card is kept: the
    card is not written, and a warning says so.
    """
    existing = (destination or directory) / CARD_NAME
    if existing.is_file() and "library_name: drllm" not in existing.read_text(errors="replace")[:400]:
        warnings.warn(f"{existing} is not a drllm model card: kept, and no card was written", stacklevel=3)
        return
    atomic_write_text(directory / CARD_NAME, model_card(config))
