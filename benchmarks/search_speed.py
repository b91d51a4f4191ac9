"""Path evaluations per second: drllm's batched evaluator against the naive per-path evaluator.

The naive evaluator does what the public Dr.LLM code does for every candidate path: set the model's layer
list to the path's expanded layers, run greedy ``generate(max_new_tokens=10)`` at batch size 1, grade.
drllm's evaluator scores many (example, path) rows per forward pass, packs all options of a question into
one row, and starts each row at its first changed layer from the recorded default-path states.
Both run in one process on the same model, questions and paths; the ratio is printed.

    python benchmarks/search_speed.py                         # SmolLM2-135M-Instruct, CPU
    python benchmarks/search_speed.py --shape llama-3.2-3b    # random weights, Llama-3.2-3B shape (GPU)
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch
from shapes import SHAPES, random_llama, sync  # benchmarks/shapes.py
from torch import nn
from transformers import DynamicCache

from drllm.router import RoutedModel, expand_path, layer_list, load_tokenizer
from drllm.search.evaluator import PathEvaluator
from drllm.search.mcts import SearchConfig, child_paths
from drllm.search.tasks import get_task


def load(args):
    tok = load_tokenizer("smollm2-135m-instruct")
    if not args.shape:
        routed = RoutedModel.from_pretrained(args.model)
        return routed, tok
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = random_llama(args.shape, device)
    return RoutedModel(model), tok


def sample_paths(num_layers: int, count: int, rng: random.Random) -> list[tuple[int, ...]]:
    """Paths 1 to 3 MCTS actions away from the default path, as a search requests them."""
    config, out = SearchConfig(), []
    for _ in range(count):
        path = (1,) * num_layers
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(child_paths(path, config))
        out.append(path)
    return out


def ours(routed, tok, task, examples, paths, batch_rows) -> tuple[float, list[float]]:
    ev = PathEvaluator(routed, tok, task, max_rows=batch_rows)
    sync()
    t = time.perf_counter()
    prepared = ev.prepare(examples)
    rows = [(p, path) for p, ps in zip(prepared, paths, strict=False) for path in ps]
    rewards = []
    for i in range(0, len(rows), batch_rows):
        rewards += ev.rewards(rows[i : i + batch_rows])
    sync()
    return time.perf_counter() - t, rewards


def naive(model, tok, task, examples, paths) -> float:
    """Per path: swap the layer list, greedy-generate 10 tokens at batch 1 (the public Dr.LLM evaluator)."""
    layers = list(layer_list(model))
    backbone, config = model.model, model.config
    types = list(getattr(config, "layer_types", None) or [])
    device = model.get_input_embeddings().weight.device
    sync()
    t = time.perf_counter()
    for ex, ps in zip(examples, paths, strict=False):
        prompt = task.prompt(ex, tok, style="plain", scoring="mc-letter")
        ids = tok(prompt, return_tensors="pt").to(device)
        for path in ps:
            order = expand_path(path)
            backbone.layers = nn.ModuleList([layers[i] for i in order])
            config.num_hidden_layers = len(order)
            if types:
                config.layer_types = [types[i] for i in order]
            out = model.generate(
                **ids,
                max_new_tokens=10,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                past_key_values=DynamicCache(),
            )  # grows to whatever layer indices it sees
            task.grade(ex, tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    sync()
    backbone.layers, config.num_hidden_layers = nn.ModuleList(layers), len(layers)
    if types:
        config.layer_types = types
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None)
    parser.add_argument("--task", default="arc_easy")
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--paths", type=int, default=16, help="paths per example for drllm's evaluator")
    parser.add_argument(
        "--naive-paths", type=int, default=2, help="paths per example for the naive evaluator"
    )
    parser.add_argument("--batch-rows", type=int, default=32)
    args = parser.parse_args()
    routed, tok = load(args)
    task = get_task(args.task)
    examples = task.load("train", limit=args.examples)
    rng = random.Random(0)
    paths = [sample_paths(routed.num_layers, args.paths, rng) for _ in examples]
    with torch.no_grad():
        ours(routed, tok, task, examples[:1], [paths[0][:2]], args.batch_rows)  # warm-up
        t_ours, _ = ours(routed, tok, task, examples, paths, args.batch_rows)
        plain = routed.unwrap()
        t_naive = naive(plain, tok, task, examples, [p[: args.naive_paths] for p in paths])
    n_ours, n_naive = len(examples) * args.paths, len(examples) * args.naive_paths
    r_ours, r_naive = n_ours / t_ours, n_naive / t_naive
    print(
        f"drllm evaluator: {n_ours} paths in {t_ours:.2f} s = {r_ours:.2f} paths/s "
        f"({t_ours / n_ours * 1e3:.1f} ms per path)"
    )
    print(
        f"naive evaluator: {n_naive} paths in {t_naive:.2f} s = {r_naive:.2f} paths/s "
        f"({t_naive / n_naive * 1e3:.1f} ms per path)"
    )
    print(f"ratio: {r_ours / r_naive:.1f}x")
    print(
        json.dumps(
            {
                "device": str(routed.device),
                "ours_paths_per_s": r_ours,
                "naive_paths_per_s": r_naive,
                "ratio": r_ours / r_naive,
                "examples": len(examples),
            }
        )
    )


if __name__ == "__main__":
    main()
