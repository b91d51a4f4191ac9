"""The ``drllm`` command: ``generate``, ``search``, ``train``, ``eval`` and ``demo`` subcommands.

Each subcommand is a plain typed function; jsonargparse turns its signature and docstring into flags and
``--help``, and every subcommand takes ``--config FILE.yaml`` with the same keys (see ``configs/``).
Flags may be written with dashes or underscores (``--batch-size`` or ``--batch_size``).
Heavy imports (transformers models, Lightning) happen inside the subcommands.
"""

from __future__ import annotations

import inspect
import os
import sys

DEFAULT_MODEL = "smollm2-135m-instruct"


def generate(
    prompt: str,
    model: str = DEFAULT_MODEL,
    decisions: str | None = None,
    routers: str | None = None,
    budget: float = 0.0,
    max_new_tokens: int = 40,
    chat: bool = True,
    stream: bool = False,
) -> str:
    """Generate a completion with routed layers and print it with the layers executed.

    Args:
        prompt: the prompt text.
        model: model name or path; "smollm2-135m-instruct" is the embedded default.
        decisions: a path such as "1,1,0,2,..." (one value per layer: 0 skip, 1 execute, 2 repeat).
        routers: a router directory (router_config.json + routers.safetensors); used when no decisions.
        budget: bias added to every router's skip logit (+ skips more).
        max_new_tokens: tokens to generate.
        chat: wrap the prompt in the tokenizer's chat template when it has one.
        stream: print tokens as they are generated.
    """
    from drllm.router import RoutedModel, batch_prompts, load_tokenizer, parse_decisions
    from drllm.router.decisions import format_decisions

    if not prompt.strip():
        raise ValueError("the prompt is empty")
    routed = RoutedModel.from_pretrained(model, routers=routers)
    routed.budget = budget
    tok = load_tokenizer(model)
    path = parse_decisions(decisions, routed.num_layers) if decisions else None
    text = prompt
    if chat and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    ids, mask = batch_prompts(tok, [text], routed.device)
    streamer = None
    if stream:
        from transformers import TextStreamer

        streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    out = routed.generate(
        ids,
        attention_mask=mask,
        decisions=path,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        streamer=streamer,
    )
    completion = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    used = routed.last_decisions[0]
    layers = int(used.sum())
    if not stream:
        print(completion)
    print(
        f"\n[layers executed per token: {layers} of {routed.num_layers}; path {format_decisions(used)}; "
        f"layer applications: {layers * (ids.shape[1] + out.shape[1] - ids.shape[1])}]"
    )
    return completion


def search(
    task: str,
    output: str,
    model: str = DEFAULT_MODEL,
    split: str | None = None,
    limit: int | None = None,
    simulations: int = 50,
    batch_size: int = 8,
    scoring: str | None = None,
    style: str = "auto",
    seed: int = 0,
    data_dir: str | None = None,
    question_field: str = "question",
    answer_field: str = "answer",
    choices_field: str | None = None,
    hf_config: str | None = None,
    devices: int = 1,
    wandb_project: str | None = None,
) -> dict:
    """Search skip/execute/repeat paths per example with MCTS and append them to a JSONL file (resumable).

    Args:
        task: arc_easy, arc_challenge, mmlu, gsm8k, math, math:1..5, jsonl:PATH, or hf:DATASET (a hub id
            or a local dataset folder/file, with the column mapping below).
        output: JSONL file; examples already in it are skipped, so a killed search resumes.
        model: model name or path; "smollm2-135m-instruct" is the embedded default.
        split: dataset split (default: the task's training split, e.g. train; dev for mmlu).
        limit: at most this many examples.
        simulations: MCTS simulations per example.
        batch_size: examples searched in lockstep.
        scoring: mc-loglik, mc-letter, teacher-forced or generate (default: the task's).
        style: prompt style: plain, chat, or auto (the better for the base model on the training split).
        seed: base seed (each example's tree is seeded from it and the example id).
        data_dir: benchmark data folder (default: $DRLLM_DATA, else ../shared/data).
        question_field: hf: tasks, the question column.
        answer_field: hf: tasks, the answer column (for multiple choice: index, label or option text).
        choices_field: hf: tasks, the options column; makes the task multiple choice.
        hf_config: hf: tasks, the dataset configuration name.
        devices: processes to shard the examples over (torchrun; one per GPU when there are GPUs).
        wandb_project: log search progress to this Weights & Biases project (off by default).
    """
    from drllm.search.runner import run_search

    if devices > 1 and "WORLD_SIZE" not in os.environ:
        args = {k: v for k, v in locals().items() if k not in ("devices", "run_search") and v is not None}
        from drllm.search.distributed import launch

        code = launch(devices, ["search", *(f"--{k}={v}" for k, v in args.items())])
        if code:
            raise RuntimeError(f"the sharded search failed (exit code {code})")
        return {}

    fields = {
        "question_field": question_field,
        "answer_field": answer_field,
        "choices_field": choices_field,
        "config": hf_config,
    }

    return run_search(
        model,
        task,
        output,
        split=split,
        limit=limit,
        simulations=simulations,
        batch_size=batch_size,
        scoring=scoring,
        style=style,
        seed=seed,
        data_dir=data_dir,
        hub_fields=fields if task.startswith("hf:") else None,
        wandb_project=wandb_project,
    )


def train(
    paths: str,
    output: str,
    model: str = DEFAULT_MODEL,
    epochs: int = 25,
    num_windows: int = 8,
    hidden_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    batch_size: int = 16,
    val_fraction: float = 0.1,
    seed: int = 0,
    logger: str = "csv",
    accelerator: str = "auto",
    devices: int = 1,
    strategy: str = "auto",
    precision: str = "32-true",
    online: bool = False,
    resume: bool = True,
) -> dict:
    """Train routers on a search output file, the base model frozen.

    Args:
        paths: the JSONL file written by ``drllm search``.
        output: directory for router_config.json, routers.safetensors, metrics.json and logs.
        model: the base model the paths were searched on.
        epochs: training epochs.
        num_windows: W, windows of the prompt each router pools over.
        hidden_size: router bottleneck width.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: examples per step.
        val_fraction: share of examples held out for validation.
        seed: seed of the split, the router initialisation and training.
        logger: csv or wandb.
        accelerator: Lightning accelerator (auto, cpu, gpu).
        devices: Lightning devices.
        strategy: Lightning strategy (auto, ddp, ...).
        precision: Lightning precision (32-true, bf16-mixed, ...).
        online: run the frozen model every step instead of using cached router inputs.
        resume: continue from ``<output>/checkpoints/last.ckpt`` when it exists.
    """
    from drllm.train.trainer import train_routers

    return train_routers(
        model,
        paths,
        output,
        epochs=epochs,
        num_windows=num_windows,
        hidden_size=hidden_size,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        val_fraction=val_fraction,
        seed=seed,
        logger=logger,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        precision=precision,
        online=online,
        resume=resume,
    )


def eval(
    task: str,
    output: str,
    model: str = DEFAULT_MODEL,
    routers: str | None = None,  # noqa: A001
    split: str | None = None,
    limit: int | None = None,
    budgets: list[float] | None = None,
    baselines: list[str] | None = None,
    max_new_tokens: int = 32,
    scoring: str | None = None,
    style: str = "auto",
    data_dir: str | None = None,
) -> list:
    """Evaluate accuracy against compute: base model, routed model over budgets, static baselines.

    Args:
        task: task name (as for search).
        output: directory for results.json, results.md, tradeoff.png and decisions.png.
        model: model name or path.
        routers: router directory.
        split: evaluation split (default: the task's validation split).
        limit: at most this many examples.
        budgets: router budget biases to sweep, e.g. -0.5,0,0.5 (default -0.5,0,0.25,0.5,0.75,1).
        baselines: any of drop-last,angular,random (default: all three).
        max_new_tokens: decoding budget for exact-answer tasks.
        scoring: as for search (default: the task's).
        style: prompt style: plain, chat, or auto (the better for the base model on the training split).
        data_dir: benchmark data folder.
    """
    from drllm.evaluation.evaluate import run_eval

    kwargs = {"budgets": tuple(budgets)} if budgets is not None else {}
    if baselines is not None:
        kwargs["baselines"] = tuple(baselines)
    return run_eval(
        model,
        task,
        output,
        routers=routers,
        split=split,
        limit=limit,
        max_new_tokens=max_new_tokens,
        scoring=scoring,
        style=style,
        data_dir=data_dir,
        **kwargs,
    )


def demo(
    output: str = "runs/demo",
    model: str = DEFAULT_MODEL,
    task: str = "arc_easy",
    train_examples: int = 200,
    eval_examples: int = 100,
    simulations: int = 24,
    epochs: int = 25,
    seed: int = 0,
    data_dir: str | None = None,
) -> dict:
    """Run search -> train -> eval on the embedded default model and write report.md (resumable).

    Args:
        output: run directory.
        model: model name or path.
        task: task name.
        train_examples: training questions searched.
        eval_examples: validation questions evaluated.
        simulations: MCTS simulations per question.
        epochs: router training epochs.
        seed: seed for search, training and baselines.
        data_dir: benchmark data folder.
    """
    from drllm.cli.demo import run_demo

    return run_demo(
        output=output,
        model=model,
        task=task,
        train_examples=train_examples,
        eval_examples=eval_examples,
        simulations=simulations,
        epochs=epochs,
        seed=seed,
        data_dir=data_dir,
    )


COMMANDS = {"generate": generate, "search": search, "train": train, "eval": eval, "demo": demo}


def normalize_flags(argv: list[str]) -> list[str]:
    """Accept the flag spellings people type, in the form jsonargparse parses.

    * ``--batch-size=4`` -> ``--batch_size=4``: dashes inside flag names become underscores;
    * a bare boolean flag (``--stream``) means true;
    * a comma list (``--budgets -1,0,1``, ``--baselines drop-last,angular``) becomes a list.
    """
    out = []
    for arg in argv:
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + eq + value
        out.append(arg)
    command = next((a for a in out if a in COMMANDS), None)
    if command is None:
        return out
    kinds = {name: str(p.annotation) for name, p in inspect.signature(COMMANDS[command]).parameters.items()}
    fixed: list[str] = []
    i = 0
    while i < len(out):
        arg = out[i]
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        kind = kinds.get(name, "")
        if kind == "bool" and not eq:
            following = out[i + 1] if i + 1 < len(out) else "--"
            if following.startswith("--") or following.lower() not in (
                "true",
                "false",
                "1",
                "0",
                "yes",
                "no",
            ):
                arg = f"--{name}=true"
        elif kind.startswith("list[") and not value.startswith("["):
            if not eq and i + 1 < len(out) and not out[i + 1].startswith("["):
                i += 1
                value = out[i]
            if value:
                arg = f"--{name}=[{value}]"
        fixed.append(arg)
        i += 1
    return fixed


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``drllm`` console script."""
    from jsonargparse import CLI

    argv = normalize_flags(sys.argv[1:] if argv is None else list(argv))
    try:
        CLI(list(COMMANDS.values()), args=argv, as_positional=False)
    except (ValueError, FileNotFoundError) as err:
        print(f"drllm: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
