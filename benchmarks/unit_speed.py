"""Do saved multiply-adds show up in time? Attention-only and block paths at the same compute, side by side.

For each saved share of the decoder stack's multiply-adds it builds two paths: one that switches off the
attention of evenly spread layers (decision 3: the MLP runs alone) and one that skips evenly spread whole
blocks, each until it saves at least that share (``drllm.router.compute``, at the context of the measured
tokens). It times prefill and greedy decode at batch 1 and batch 8 for both and for the full path, in one
run, and prints each speed-up beside its ideal (full multiply-adds over the path's) and their ratio.

    python benchmarks/unit_speed.py                       # SmolLM2-135M-Instruct on CPU
    python benchmarks/unit_speed.py --shape llama-3.2-3b  # random weights, Llama-3.2-3B shape (GPU)
"""

from __future__ import annotations

import argparse
import json

import torch
from generate_speed import decode_tps, load, spread_path, timed

from drllm.router import path_macs


def attention_off_path(config, num_layers: int, saved: float, tokens: int) -> list[int]:
    """Switch off the attention of evenly spread inner layers until ``saved`` of the stack is saved."""
    for k in range(1, num_layers - 1):
        inner = spread_path(num_layers, num_layers - k)  # k evenly spread inner layers
        path = [3 if d == 0 else 1 for d in inner]
        if 1 - path_macs(config, path, tokens)["fraction"] >= saved:
            return path
    raise ValueError(f"switching off every inner attention saves less than {saved:.0%}")


def block_path(config, num_layers: int, saved: float, tokens: int) -> list[int]:
    """Skip evenly spread inner blocks until ``saved`` of the stack is saved."""
    for k in range(1, num_layers - 1):
        path = spread_path(num_layers, num_layers - k)
        if 1 - path_macs(config, path, tokens)["fraction"] >= saved:
            return path
    raise ValueError(f"skipping every inner block saves less than {saved:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--shape", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--saved", type=float, nargs="*", default=[0.1, 0.2])
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8])
    args = parser.parse_args()
    routed = load(args)
    L, config = routed.num_layers, routed.config
    torch.manual_seed(0)
    context = args.prompt_tokens + args.new_tokens // 2
    paths = {"full": [1] * L}
    for saved in args.saved:
        paths[f"attention-off {saved:.0%}"] = attention_off_path(config, L, saved, context)
        paths[f"blocks {saved:.0%}"] = block_path(config, L, saved, context)
    rows = []
    head = ("path", "batch", "macs", "prefill x", "decode x", "ideal", "prefill/ideal", "decode/ideal")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (20, 5, 6, 9, 9, 6, 13, 12), strict=True)))
    for batch in args.batches:
        ids = torch.randint(10, 1000, (batch, args.prompt_tokens), device=routed.device)
        decode_tps(routed, ids, paths["full"], 4, 1)  # warm-up
        times = {}
        for name, path in paths.items():  # one run, side by side
            prefill = timed(lambda p=path, x=ids: routed(x, decisions=p), args.repeats, routed.device)
            times[name] = (prefill, decode_tps(routed, ids, path, args.new_tokens, args.repeats))
        for name, path in paths.items():
            fraction = path_macs(config, path, context)["fraction"]
            prefill_x = times["full"][0] / times[name][0]
            decode_x = times[name][1] / times["full"][1]
            ideal = 1 / fraction
            rows.append(dict(path=name, batch=batch, decisions=path, macs_fraction=fraction,
                             prefill_speedup=prefill_x, decode_speedup=decode_x, ideal=ideal,
                             prefill_of_ideal=prefill_x / ideal,
                             decode_of_ideal=decode_x / ideal))  # fmt: skip
            print(f"{name:>20} {batch:5d} {fraction:6.3f} {prefill_x:9.2f} {decode_x:9.2f} {ideal:6.2f} "
                  f"{prefill_x / ideal:13.2f} {decode_x / ideal:12.2f}")  # fmt: skip
    print(json.dumps({"device": str(routed.device), "num_layers": L, "context": context, "rows": rows}))


if __name__ == "__main__":
    main()
