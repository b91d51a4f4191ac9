"""Greedy decode speed of routed paths against the all-execute path, and the routers' share of prefill.

For each path executing k of L layers it prints decode tokens/s at batch 1, the speed-up over the
all-execute path, the ideal L/k, and the speed-up as a fraction of that ideal. It also prints the
"reachable" ideal, which accounts for the time that does not scale with layers (embedding, LM head,
sampling, Python), measured with every layer skipped. Last, the routers' share of prefill time: a prefill
with routers deciding against the same prefill with their decisions given.

    python benchmarks/generate_speed.py                       # SmolLM2-135M-Instruct on CPU
    python benchmarks/generate_speed.py --shape llama-3.2-3b  # random weights, Llama-3.2-3B shape (GPU)
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from shapes import SHAPES, random_llama, sync  # benchmarks/shapes.py

from drllm.router import RoutedModel


def load(args) -> RoutedModel:
    device = "cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    if args.shape:
        return RoutedModel(random_llama(args.shape, device))
    return RoutedModel.from_pretrained(args.model).to(device)


def spread_path(num_layers: int, k: int) -> list[int]:
    """Execute k layers: keep the first and last, skip evenly spaced layers in between."""
    drop = num_layers - k
    inner = list(range(1, num_layers - 1))
    skipped = {inner[round(j * (len(inner) - 1) / max(drop - 1, 1))] for j in range(drop)} if drop else set()
    while len(skipped) < drop:  # rounding collisions
        skipped.add(next(i for i in inner if i not in skipped))
    return [0 if i in skipped else 1 for i in range(num_layers)]


def timed(fn, repeats: int, device) -> float:
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return min(times)  # the least disturbed run: on a shared CPU, noise only ever adds time


def decode_tps(routed, ids, path, new_tokens: int, repeats: int) -> float:
    """Decode tokens/s: (new_tokens - 1) / (generate time - prefill-only generate time)."""
    kw = dict(decisions=path, do_sample=False, pad_token_id=0)
    full = timed(
        lambda: routed.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw),
        repeats,
        routed.device,
    )
    first = timed(
        lambda: routed.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw), repeats, routed.device
    )
    return (new_tokens - 1) / max(full - first, 1e-9)


def router_share(routed, ids, repeats: int, kind: str = "mlp", examples: int = 400) -> dict:
    """The routers' share of prefill time; a ``knn`` router remembers ``examples`` (random) prompts.

    ``kind@r`` routers all read layer r's input and decide every layer there (``read_layer=r``, one
    router call per prompt). Every router computes its logits, but the all-execute default path with
    threshold 1.0 (nothing protected) makes every kind decide the same path, so their shares compare.
    """
    kind, _, read = kind.partition("@")
    routers = routed.add_routers(
        kind=kind, examples=examples if kind == "knn" else 0, read_layer=int(read) if read else None
    )
    routers.set_default_path([1] * routed.num_layers, threshold=1.0, protected=())
    with torch.no_grad():
        decided = routed.route(ids)
    base = routed.model.base_model

    def with_routers():
        with torch.no_grad(), routed.forced(None, None, ids.shape[0]):
            base(input_ids=ids, use_cache=False)

    def given():
        with torch.no_grad(), routed.forced(decided, None, ids.shape[0]):
            base(input_ids=ids, use_cache=False)

    t_routed, t_given = float("inf"), float("inf")
    for _ in range(repeats):  # interleaved, so both see the same machine state
        t_routed = min(t_routed, timed(with_routers, 1, routed.device))
        t_given = min(t_given, timed(given, 1, routed.device))
    return {
        "prefill_with_routers_s": t_routed,
        "prefill_given_s": t_given,
        "router_share": max(t_routed - t_given, 0.0) / t_routed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=float, nargs="*", default=[0.75, 0.5])
    parser.add_argument(
        "--routers",
        nargs="*",
        default=["mlp", "linear", "shared", "knn", "mlp@2", "linear@2", "shared@2", "knn@2"],
        help="router kinds whose share to measure; kind@r: one call reading layer r (read_layer=r)",
    )
    args = parser.parse_args()
    routed = load(args)
    L = routed.num_layers
    torch.manual_seed(0)
    ids = torch.randint(10, 1000, (1, args.prompt_tokens), device=routed.device)
    decode_tps(routed, ids, [1] * L, 4, 1)  # warm-up
    base_tps = decode_tps(routed, ids, [1] * L, args.new_tokens, args.repeats)
    fixed_tps = decode_tps(routed, ids, [0] * L, args.new_tokens, args.repeats)
    t_all, t_fixed = 1 / base_tps, 1 / fixed_tps
    rows = []
    print(
        f"{'path':>12} {'tok/s':>8} {'speed-up':>9} {'ideal L/k':>10} {'of ideal':>9}"
        f" {'reachable':>10} {'of reach.':>9}"
    )
    print(f"{'all ' + str(L):>12} {base_tps:8.1f} {1.0:9.2f} {1.0:10.2f} {1.0:9.2f} {1.0:10.2f} {1.0:9.2f}")
    for frac in args.keep:
        k = max(1, round(L * frac))
        tps = decode_tps(routed, ids, spread_path(L, k), args.new_tokens, args.repeats)
        speed, ideal = tps / base_tps, L / k
        reach = t_all / (t_fixed + (t_all - t_fixed) * k / L)
        rows.append(
            dict(
                k=k,
                tps=tps,
                speedup=speed,
                ideal=ideal,
                of_ideal=speed / ideal,
                reachable=reach,
                of_reachable=speed / reach,
            )
        )
        print(
            f"{f'{k} of {L}':>12} {tps:8.1f} {speed:9.2f} {ideal:10.2f} {speed / ideal:9.2f} {reach:10.2f} "
            f"{speed / reach:9.2f}"
        )
    print(f"time per token that does not scale with layers: {t_fixed * 1e3:.1f} ms of {t_all * 1e3:.1f} ms")
    shares = {}
    for kind in args.routers:
        share = shares[kind] = router_share(routed, ids, args.repeats, kind)
        print(
            f"{kind} routers' share of prefill time: {share['router_share']:.2%} "
            f"({share['prefill_with_routers_s'] * 1e3:.1f} ms with routers, "
            f"{share['prefill_given_s'] * 1e3:.1f} ms given)"
        )
    print(
        json.dumps(
            {
                "device": str(routed.device),
                "num_layers": L,
                "all_tps": base_tps,
                "fixed_ms": t_fixed * 1e3,
                "paths": rows,
                "router_shares": shares,
            }
        )
    )


if __name__ == "__main__":
    main()
