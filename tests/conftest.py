import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("DRLLM_NO_HUB", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random llama and a character tokenizer saved as a Hugging Face folder (loadable by name)."""
    from tiny_models import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture
def mc_file(tmp_path):
    """A small multiple-choice jsonl task file."""
    import json

    words = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "rock", "fish", "bird", "star"]
    rows = []
    for k in range(12):
        choices = [words[(k + j) % len(words)] for j in range(3)]
        rows.append(
            {"id": f"q{k}", "question": f"which is {choices[k % 3]}?", "choices": choices, "answer": k % 3}
        )
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(autouse=True)
def _drllm_logger_as_found():
    """Commands run in-process turn the drllm logger to INFO; every test starts from Python's default."""
    import logging

    logger = logging.getLogger("drllm")
    level, handlers = logger.level, list(logger.handlers)
    logger.setLevel(logging.NOTSET)
    for handler in handlers:
        logger.removeHandler(handler)
    yield
    logger.setLevel(level)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    for handler in handlers:
        logger.addHandler(handler)
