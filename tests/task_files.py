"""Small task files (jsonl) written for tests."""

import json

WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]


def choice_file(path, n=6):
    """A small multiple-choice jsonl task file."""
    rows = [
        {
            "id": f"q{i}",
            "question": f"what is {WORDS[i % 8]} {i}?",
            "choices": [WORDS[(i + k) % 8] for k in range(3)],
            "answer": i % 3,
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"jsonl:{path}"


def exact_file(path, n=3):
    rows = [{"id": f"e{i}", "prompt": f"add {i} and 1:", "target": f" {i + 1}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"jsonl:{path}"
