"""Router training speed: the feature cache against running the frozen model every step (online).

On synthetic search rows (ARC-Easy train questions, or random text when the file is missing, with random
decision vectors holding a few skips and repeats) it measures in one process:

(a) the one-time cost of ``build_features`` (the teacher-forced feature cache),
(b) seconds per epoch of cached training: router forward, focal loss, backward and AdamW step over the
    cached ``FeatureSet``,
(c) seconds per epoch of online training: the same loop, the frozen model run each step (``online_pooled``),
(d) steps per second of KL training (``--objective kl``, ``drllm.train.kl``, its default score-function
    estimator): per batch the base model's teacher forward, the routed forward along sampled hard paths
    (no gradient through the frozen model), the REINFORCE loss on the routers' path log-probabilities, its
    backward and the AdamW step, on the same prompts plus a 16-token continuation, with ``static`` and with
    per-layer ``linear`` routers; steps per second print beside cached label training's.

Both modes run the same plain loop (``RouterModule.batch_loss``, backward, optimizer step) over the
batches of ``RouterDataModule.train_dataloader``; their epochs alternate, so background load hits both
alike, and each mode's fastest epoch is reported. It prints a table, ``ratio online/cached``, the
extrapolated wall time of the Dr.LLM setting (4,000 paths, 25 epochs) and a last line of JSON.

    python benchmarks/train_speed.py                                # SmolLM2-135M-Instruct
    python benchmarks/train_speed.py --model tiny                   # 4-layer random llama, seconds
    python benchmarks/train_speed.py --shape llama-3.2-3b           # random weights, Llama-3.2-3B shape (GPU)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from shapes import random_llama  # benchmarks/shapes.py

from drllm.router import RoutedModel, encode_prompt, load_tokenizer
from drllm.search.records import SearchRecord
from drllm.train.data import RouterDataModule
from drllm.train.features import build_features, online_pooled
from drllm.train.module import RouterModule

ARC_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "arc" / "ARC-Easy" / "train.jsonl"
TOKENIZER = "smollm2-135m-instruct"
DRLLM_PATHS, DRLLM_EPOCHS = 4000, 25


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load(args, device: torch.device):
    """``(RoutedModel, tokenizer)``: a random-weight llama for ``tiny`` / ``--shape``, else a named model."""
    if args.shape or args.model == "tiny":
        return RoutedModel(random_llama(args.shape or "tiny", device)), load_tokenizer(TOKENIZER)
    return RoutedModel.from_pretrained(args.model).to(device), load_tokenizer(args.model)


def arc_items(path: Path) -> list[tuple[str, str]]:
    """``(question, answer text)`` pairs of an ARC jsonl file; empty when the file is missing."""
    if not path.is_file():
        return []
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            choices = dict(zip(row["choices"]["label"], row["choices"]["text"], strict=False))
            items.append((row["question"], choices.get(row["answerKey"], "")))
    return items


def arc_prompt(tokenizer, items, i: int, prompt_tokens: int) -> str:
    """Question i as ``"Question: {q}\\nAnswer:"``, preceded by solved questions up to ``prompt_tokens``."""
    text = f"Question: {items[i][0]}\nAnswer:"
    j = i + 1
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < prompt_tokens:
        q, a = items[j % len(items)]
        text = f"Question: {q}\nAnswer: {a}\n\n" + text
        j += 1
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][-prompt_tokens:]
    return tokenizer.decode(ids)


def random_decisions(num_layers: int, rng: random.Random) -> list[int]:
    """Mostly execute (1), with about 10% skips (0) and 5% repeats (2)."""
    return [rng.choices([0, 1, 2], weights=[0.10, 0.85, 0.05])[0] for _ in range(num_layers)]


def synthetic_rows(tokenizer, num_layers: int, n: int, prompt_tokens: int, seed: int = 0):
    """``(rows, source)``: search-like rows (``id``, ``prompt``, ``decisions``), where prompts came from."""
    rng = random.Random(seed)
    items = arc_items(ARC_TRAIN)
    rows = []
    for i in range(n):
        if items:
            prompt = arc_prompt(tokenizer, items, i, prompt_tokens)
        else:
            prompt = tokenizer.decode([rng.randrange(100, 10000) for _ in range(prompt_tokens)])
        rows.append(SearchRecord(id=str(i), prompt=prompt, decisions=random_decisions(num_layers, rng)))
    rows[0].decisions[0], rows[0].decisions[-1] = 0, 2  # every class present: finite focal weights
    return rows, (str(ARC_TRAIN) if items else "random text")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_trainer(routed, tokenizer, data, num_windows: int, online: bool, device: torch.device):
    """``(module, optimizer)``: fresh seeded routers in a RouterModule (holding the model when online)."""
    routers = routed.add_routers(num_windows, seed=0).train()
    frozen = {"routed": routed, "tokenizer": tokenizer} if online else {}
    module = RouterModule(routers, data.class_counts().tolist(), **frozen).to(device)
    optimizer = torch.optim.AdamW(
        module.routers.parameters(), lr=module.hparams.lr, weight_decay=module.hparams.weight_decay
    )
    return module, optimizer


def train_step(module, optimizer, batch: dict, device: torch.device) -> float:
    """One optimizer step: pooled inputs (cached or online), router forward, focal loss, backward, step."""
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    loss, _ = module.batch_loss(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def timed_epoch(module, optimizer, loader, device: torch.device) -> float:
    """Wall seconds of one pass over ``loader``."""
    sync(device)
    start = time.perf_counter()
    for batch in loader:
        train_step(module, optimizer, batch, device)
    sync(device)
    return time.perf_counter() - start


def timed_build(routed, tokenizer, rows, num_windows: int, batch_size: int, device: torch.device):
    """``(FeatureSet, seconds)`` of building the feature cache in memory, after one warm-up forward."""
    warm = rows[:batch_size]
    online_pooled(routed, tokenizer, [r.prompt for r in warm], [r.decisions for r in warm], num_windows)
    sync(device)
    start = time.perf_counter()
    features = build_features(routed, tokenizer, rows, num_windows, batch_size, None)
    sync(device)
    return features, time.perf_counter() - start


def measure(args, routed, tokenizer, rows, device: torch.device) -> dict:
    """Cache build seconds, then cached and online epochs alternating (each mode warmed up by one step)."""
    features, build_s = timed_build(routed, tokenizer, rows, args.num_windows, args.batch_size, device)
    modes = {
        "cached": RouterDataModule(features=features, batch_size=args.batch_size, seed=0),
        "online": RouterDataModule(rows=rows, batch_size=args.batch_size, seed=0),
    }
    trainers = {
        m: make_trainer(routed, tokenizer, d, args.num_windows, m == "online", device)
        for m, d in modes.items()
    }
    for mode, (module, optimizer) in trainers.items():
        train_step(module, optimizer, next(iter(modes[mode].train_dataloader())), device)
    torch.manual_seed(0)
    epochs = {"cached": [], "online": []}
    for _ in range(args.epochs):
        for mode, (module, optimizer) in trainers.items():
            epochs[mode].append(timed_epoch(module, optimizer, modes[mode].train_dataloader(), device))
    kl = {kind: timed_kl(routed, tokenizer, rows, args, device, kind) for kind in ("static", "linear")}
    steps = len(modes["cached"].train_dataloader())
    return {
        "kl_steps_per_s": {k: v for k, v in kl.items()},
        "cached_steps_per_s": steps / min(epochs["cached"]),
        "build_s": build_s,
        "train_examples": len(modes["cached"].train_indices),
        "cache_bytes_per_example": _bytes_per_example(features),
        "cached_epoch_s": min(epochs["cached"]),
        "online_epoch_s": min(epochs["online"]),
        "cached_epochs_s": epochs["cached"],
        "online_epochs_s": epochs["online"],
    }


def timed_kl(routed, tokenizer, rows, args, device: torch.device, kind: str) -> float:
    """Steps per second of KL training (fastest of ``args.epochs`` passes over the prompts)."""
    from drllm.router import Relaxation
    from drllm.search.closeness import batch_tensors, teacher_log_probs
    from drllm.train.kl import relaxed_step

    g = torch.Generator().manual_seed(0)
    kl_rows = [
        {
            "prompt_ids": encode_prompt(tokenizer, r.prompt),
            "continuation": torch.randint(3, 1000, (16,), generator=g).tolist(),
        }
        for r in rows
    ]
    saved = routed.routers
    routers = routed.add_routers(kind=kind, seed=0)
    optimizer = torch.optim.AdamW([p for p in routers.parameters() if p.requires_grad], lr=1e-2)
    fixed = [0, 1, routed.num_layers - 1]
    best = float("inf")
    for _ in range(args.epochs):
        sync(device)
        start, steps = time.perf_counter(), 0
        for i in range(0, len(kl_rows), args.batch_size):
            batch = batch_tensors(kl_rows[i : i + args.batch_size], 0, device)
            teacher = teacher_log_probs(routed, batch)
            relaxation = Relaxation(routers, tau=0.5, fixed=fixed, generator=g, straight_through=False)
            kl = relaxed_step(routed, relaxation, batch, teacher).detach()  # as fit_kl's default estimator
            loss = ((kl - kl.mean()) * relaxation.path_log_prob()).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
        sync(device)
        best = min(best, (time.perf_counter() - start) / steps)
    routed.routers = saved
    routed._state.routers = saved
    return 1.0 / best


def _bytes_per_example(features) -> int:
    tensors = (features.pooled, features.valid, features.decisions)
    return sum(t[0].numel() * t.element_size() for t in tensors)


def summarize(m: dict, n_examples: int) -> dict:
    """Per-example costs, the online/cached ratio and the extrapolated Dr.LLM-setting hours."""
    build_pe = m["build_s"] / n_examples
    cached_pe = m["cached_epoch_s"] / m["train_examples"]
    online_pe = m["online_epoch_s"] / m["train_examples"]
    cached_h = (build_pe * DRLLM_PATHS + cached_pe * DRLLM_PATHS * DRLLM_EPOCHS) / 3600
    return {
        "build_s_per_example": build_pe,
        "cached_epoch_s_per_example": cached_pe,
        "online_epoch_s_per_example": online_pe,
        "ratio_online_cached": online_pe / cached_pe,
        "drllm_cached_hours": cached_h,
        "drllm_online_hours": online_pe * DRLLM_PATHS * DRLLM_EPOCHS / 3600,
        "drllm_cache_gib": m["cache_bytes_per_example"] * DRLLM_PATHS / 2**30,
    }


def report(info: dict, m: dict, s: dict) -> None:
    print(
        f"model {info['model']} ({info['num_layers']} layers, d={info['hidden_size']}) "
        f"on {info['device']}, "
        f"{info['threads']} threads; {info['examples']} examples ({m['train_examples']} train), "
        f"~{info['mean_prompt_tokens']:.0f} prompt tokens, batch {info['batch_size']}, "
        f"W={info['num_windows']}, prompts from {info['source']}"
    )
    print(f"{'phase':<34} {'seconds':>9} {'ms / example':>13}")
    print(f"{'feature cache build (once)':<34} {m['build_s']:9.3f} {s['build_s_per_example'] * 1e3:13.3f}")
    print(
        f"{'cached training, per epoch':<34} {m['cached_epoch_s']:9.3f} "
        f"{s['cached_epoch_s_per_example'] * 1e3:13.3f}"
    )
    print(
        f"{'online training, per epoch':<34} {m['online_epoch_s']:9.3f} "
        f"{s['online_epoch_s_per_example'] * 1e3:13.3f}"
    )
    print(
        f"ratio online/cached = {s['ratio_online_cached']:.1f}x (per epoch; fastest of {info['epochs']} "
        f"alternating epochs each)"
    )
    kl = m["kl_steps_per_s"]
    print(
        f"steps per second (batch {info['batch_size']}): cached labels {m['cached_steps_per_s']:.2f}, "
        f"KL static {kl['static']:.2f}, KL linear {kl['linear']:.2f} "
        f"(ratio cached/KL-linear {m['cached_steps_per_s'] / kl['linear']:.0f}x)"
    )
    print(
        f"Dr.LLM setting ({DRLLM_PATHS} paths, {DRLLM_EPOCHS} epochs): "
        f"cached {s['drllm_cached_hours']:.3f} h "
        f"(build + training), online {s['drllm_online_hours']:.3f} h; cache "
        f"{s['drllm_cache_gib']:.2f} GiB in memory"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model name or folder, or 'tiny'")
    parser.add_argument(
        "--shape", choices=["llama-3.2-3b", "smollm2-135m"], default=None, help="random weights of this shape"
    )
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num-windows", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default); 1 avoids stalls on a busy machine",
    )
    args = parser.parse_args()
    if args.examples < 2 or args.epochs < 1:
        parser.error(f"need --examples >= 2 and --epochs >= 1, got {args.examples} and {args.epochs}")
    return args


def main() -> None:
    args = parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    routed, tokenizer = load(args, device)
    rows, source = synthetic_rows(tokenizer, routed.num_layers, args.examples, args.prompt_tokens)
    lengths = [len(encode_prompt(tokenizer, r.prompt)) for r in rows]
    info = {
        "model": args.shape or args.model,
        "device": str(device),
        "num_layers": routed.num_layers,
        "hidden_size": routed.hidden_size,
        "examples": args.examples,
        "batch_size": args.batch_size,
        "num_windows": args.num_windows,
        "epochs": args.epochs,
        "source": source,
        "mean_prompt_tokens": statistics.mean(lengths),
        "threads": torch.get_num_threads(),
    }
    m = measure(args, routed, tokenizer, rows, device)
    s = summarize(m, args.examples)
    report(info, m, s)
    print(json.dumps({**info, **m, **s}))


if __name__ == "__main__":
    main()
