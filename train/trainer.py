"""``train_routers``: from a search's paths file to saved routers and their validation metrics.

    metrics = train_routers("smollm2-135m-instruct", "runs/arc/paths.jsonl", "runs/arc/routers")

Steps: check every argument and the paths file, lock the output folder (``train.lock``), load the model
and tokenizer (or take them), refuse paths searched with another model, build (or reuse) the
teacher-forced feature cache, attach fresh seeded routers, train them with Lightning (checkpoints in
``<output>/checkpoints`` beside the ``run.json`` they were made with, resumed from ``last.ckpt``), then
save the best epoch's routers as ``router_config.json`` + ``routers.safetensors``, its validation metrics
as ``metrics.json`` and the run's settings as ``run.json``. The finished files are written aside and
replace the old ones only at the end (see :mod:`drllm.train.outputs`): a failed or killed run leaves the
previous routers as they were.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import warnings
from pathlib import Path
from typing import Literal

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger

from drllm.router import RoutedModel, load_routed, load_tokenizer
from drllm.router.routers import TRAINED_ON_NAME
from drllm.search import progress
from drllm.search.records import check_searched_with, read_records

from . import outputs
from .arguments import CONTROLS, LOGGERS, ROUTER_KINDS, check_arguments, check_prompts  # noqa: F401
from .data import RouterDataModule
from .features import build_features
from .kl_run import DEFAULT_TASKS, train_kl
from .lightning_setup import MONITOR, REGRET, checkpoints, decision_figure, fit, make_logger  # noqa: F401
from .module import RouterModule
from .neighbours import fit_neighbours, shuffled_targets
from .outputs import check_resume as _check_resume  # noqa: F401 - tests call it by this name
from .outputs import load_checkpoint, read_run_record  # noqa: F401 - readers import read_run_record here
from .regret import static_choices, sweep_gains
from .targets import Targets, path_actions, target_table

RouterKind = Literal["mlp", "linear", "shared", "knn", "static"]
Control = Literal["none", "shuffled"]
Objective = Literal["labels", "kl"]


def train_routers(
    model: str,
    paths: str | None = None,
    output: str = "runs/routers",
    epochs: int = 25,
    num_windows: int = 8,
    bottleneck: int = 128,
    lr: float | None = None,
    weight_decay: float = 0.01,
    batch_size: int = 16,
    val_fraction: float = 0.1,
    seed: int = 0,
    logger: str | None = "csv",
    wandb_project: str | None = None,
    wandb_name: str | None = None,
    wandb_tags: list[str] | None = None,
    accelerator: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    precision: str = "32-true",
    online: bool = False,
    cache_dir: str | None = None,
    resume: bool = True,
    tokenizer=None,
    device: str | None = None,
    dtype: str | None = None,
    targets: Targets = "soft",
    safe_margin: float = 0.0,
    router: RouterKind | None = None,
    neighbours: int = 16,
    control: Control = "none",
    read_layer: int | None = 2,
    objective: Objective = "labels",
    target_layers: float | None = None,
    min_layers: float = 0.0,
    tasks: list[str] | None = None,
    examples_per_task: int | None = 400,
    continuation_tokens: int = 16,
    gold_weight: float = 0.0,
    start: str = "best",
    reward_baseline: str = "running-mean",
    units: str = "block",
    budget_by: str = "shift",
    start_margin: float = 2.0,
) -> dict:
    """Train routers on the paths found by search and save the best epoch's routers in ``output``.

    Args:
        model: a model name or folder (``RoutedModel.from_pretrained``), or an already built ``RoutedModel``.
        paths: the search's JSONL output (a --units sublayer search trains routers with 5 actions).
        output: folder for routers, ``metrics.json``, ``run.json``, checkpoints, logs and the feature cache;
            locked (``train.lock``) while the run writes it: a second run into it is refused.
        epochs: training epochs (a resumed run continues up to this many in all).
        num_windows: W, windows pooled per prompt.
        bottleneck: router bottleneck width (hidden units of each layer's router MLP).
        lr: AdamW learning rate (labels: warmup then cosine decay); default 1e-3 for ``labels``, for ``kl``
            0.05 with ``static`` routers and 0.01 with the others.
        weight_decay: AdamW weight decay.
        batch_size: examples per batch (features are built in batches of the same size).
        val_fraction: share of examples held out for validation, split by example with ``seed``.
        seed: seed of the split, the routers' initial weights and the shuffling.
        logger: ``"csv"``, ``"wandb"`` or ``None``/``"none"``; ``wandb_project`` switches to ``"wandb"``.
        wandb_project: the W&B project (labels only; the switch ``drllm search`` shares; ``wandb login``).
        wandb_name: the W&B run name.
        wandb_tags: W&B tags of the run.
        accelerator: Lightning accelerator (``kl``: ``cpu`` alone, which sets ``device``).
        devices: Lightning devices (labels only).
        strategy: Lightning strategy (labels only).
        precision: Lightning precision (labels only; ``dtype`` sets the model's).
        online: run the frozen model every step instead of caching its pooled hidden states.
        cache_dir: feature cache folder; defaults to ``<output>/feature_cache``.
        resume: continue from ``<output>/checkpoints/last.ckpt`` when it exists (refused when it was made
            from other inputs); False starts over, the finished routers staying until this run ends.
        tokenizer: the tokenizer, required when ``model`` is a ``RoutedModel``.
        device: where the frozen model runs while features are built (``load_routed``'s policy: CUDA when
            available; the CPU when ``accelerator="cpu"``).
        dtype: the model's dtype (auto or None: the checkpoint's; float32, bfloat16, float16).

        targets: ``soft`` (the default) trains on the share of skip / execute / repeat over every safe
            path the search evaluated (``drllm.train.targets``); ``hard`` on the one path it chose.
        safe_margin: with soft targets, the gold margin a path must keep to count as safe.
        router: the router head (``drllm.router.heads``); default ``shared`` for ``labels`` and ``static`` for
            ``kl``, the recipes the README recommends: ``mlp`` per layer on raw window means (Dr.LLM's),
            ``linear`` per layer, one ``shared`` MLP with a layer embedding, or ``knn``, which keeps the
            training prompts and averages the targets of the ``neighbours`` nearest (no gradient training,
            no checkpoints); all but ``mlp`` read window means normalised with the model's final norm, the
            first token left out.
        neighbours: ``knn``: how many nearest training prompts vote.
        control: ``shuffled`` trains on targets permuted among the training prompts (seeded), a control
            with every per-prompt signal removed: routers that do not beat it have learned none.
        read_layer: every router reads the input of this layer and all decide there at once (one router
            call per prompt, the cheapest at inference; the layers before it keep the default path); default
            2; None: router ``i`` reads layer ``i``'s input, as in Dr.LLM.
        objective: ``labels`` fits the search's paths (Dr.LLM's method, needs ``paths``); ``kl`` fits the
            base model's own next-token distribution over its greedy continuations at a layer budget
            (``drllm.train.kl_run``; router kinds ``static``, ``linear``, ``mlp``; no paths file).
        target_layers: ``kl``: the mean layers per prompt the routers must run.
        min_layers: ``kl``: a per-prompt floor (a penalty below it).
        tasks: ``kl``: the prompt pool, task names with an optional split (default ARC-Easy train, MMLU
            dev, GSM8K train); gold answers only with --gold-weight.
        examples_per_task: ``kl``: prompts taken from each task.
        continuation_tokens: ``kl``: tokens of the base model's greedy continuation per prompt.
        gold_weight: ``kl``: weight of the task loss added where a prompt has answer options (the gold
            option's cross-entropy among the options' log-likelihoods, on the same routed path).
        start: ``kl``: the static path training starts on: ``best`` of ``angular``, ``block-influence`` and
            ``greedy-kl`` by KL on calibration prompts, or one of them.
        reward_baseline: ``kl``: ``running-mean`` or ``per-prompt`` (each prompt's deployed path's cost).
        units: ``kl``: ``block``, or ``sublayer`` for routers that may also run a layer's MLP or attention
            alone (5 actions; ``target_layers`` then counts compute). Label training reads it off the paths.
        budget_by: ``kl``: ``shift`` (of the skip logits) or ``price`` (per layer, in each path's cost).
        start_margin: ``kl``: the start path's lead in every router logit (smaller: more exploration, a path
            that moves sooner; ``drllm.train.kl_run.train_kl``).

    Returns:
        The best epoch's validation metrics (``routing_metrics`` keys, ``epoch``, ``val_loss``; with a sweep
        in every record also the validation regret, the static choice's, ``per_input_signal`` and the
        ``verdict``, see ``drllm.train.regret``). The best epoch is the one of least regret when there is a
        sweep, else of highest macro F1.
    """
    check_arguments(locals())
    router = router or ("static" if objective == "kl" else "shared")  # the recipes the README recommends
    if objective == "kl":
        return train_kl(
            model,
            output,
            target_layers,
            tasks=tasks or DEFAULT_TASKS,
            router=router,
            examples_per_task=examples_per_task,
            continuation_tokens=continuation_tokens,
            min_layers=min_layers,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr if lr is not None else (0.05 if router == "static" else 0.01),
            weight_decay=weight_decay,
            val_fraction=val_fraction,
            seed=seed,
            resume=resume,
            tokenizer=tokenizer,
            device=device or ("cpu" if accelerator == "cpu" else None),
            dtype=dtype,
            num_windows=num_windows,
            bottleneck=bottleneck,
            gold_weight=gold_weight,
            start=start,
            baseline=reward_baseline,
            units=units,
            budget_by=budget_by,
            start_margin=start_margin,
        )
    lr = 1e-3 if lr is None else lr
    first = read_records(paths)
    check_prompts(first, paths)  # every row is checked before the model loads
    actions = path_actions(first)
    by_regret = bool(first) and sweep_gains(first, len(first[0].decisions)) is not None
    output, leader = Path(output), outputs.is_leader()
    wandb = (wandb_project, wandb_name, wandb_tags)
    logger = ("wandb" if wandb_project else logger, *wandb)
    trainer, checkpoint = _trainer(
        epochs, logger, output, accelerator, devices, strategy, precision, by_regret
    )
    with outputs.locked(output) if leader else contextlib.nullcontext():
        routed, tokenizer = _load(model, tokenizer, accelerator, device, dtype)
        rows = read_records(paths, routed.num_layers)
        check_searched_with(rows, routed, paths)
        run = _run_identity(routed, paths, num_windows, bottleneck, val_fraction, seed, online)
        run.update(targets=targets, safe_margin=safe_margin, router=router, control=control)
        if actions != 3:  # sublayer paths; block runs keep the identity they always had
            run["actions"] = actions
        # what a resumed run must share with the checkpoint it continues (epochs may grow)
        run.update(lr=lr, weight_decay=weight_decay, batch_size=batch_size, precision=precision)
        if read_layer is not None and read_layer >= routed.num_layers:
            raise ValueError(f"read_layer must be a layer in [0, {routed.num_layers}), got {read_layer!r}")
        run["read_layer"] = read_layer
        if router == "knn":
            run["neighbours"] = neighbours
        last = output / "checkpoints" / "last.ckpt"
        resuming = outputs.prepare_checkpoints(last.parent, run, resume, leader)
        if resuming:
            outputs.check_epochs(last, epochs)
        routed.model.requires_grad_(False)
        features = None
        if not online:
            cache = cache_dir or output / "feature_cache"
            skip_first = router != "mlp"
            features = build_features(routed, tokenizer, rows, num_windows, batch_size, cache, skip_first)
        table = None
        if targets != "hard" or control != "none" or router == "knn":
            table = target_table(rows, routed.num_layers, targets, safe_margin, actions)
        gains = sweep_gains(rows, routed.num_layers) if by_regret else None
        data = RouterDataModule(
            features=features,
            rows=rows if online else None,
            batch_size=batch_size,
            val_fraction=val_fraction,
            seed=seed,
            targets=table,
            gains=gains,
            actions=actions,
        )
        static = static_choices(gains, data.train_indices) if gains is not None else None
        if control == "shuffled":
            data.targets = table = shuffled_targets(table, data.train_indices, seed)
        L.seed_everything(seed, verbose=False)
        examples = len(data.train_indices) if router == "knn" else 0
        routers = routed.add_routers(
            num_windows,
            bottleneck,
            seed,
            kind=router,
            neighbours=neighbours,
            examples=examples,
            read_layer=read_layer,
            actions=actions,
        ).train()
        if router == "knn":
            counts = data.class_counts().tolist()
            metrics = fit_neighbours(
                routers, features, table, data.train_indices, data.val_indices, counts, gains, static
            )
            routers.config.verdict = metrics.get("verdict", "")
            routers.eval()
            settings = {**run, "precision": precision}
            if leader:
                with outputs.disk_errors(output):
                    _finish(routed, metrics, settings, features, data, output, trainer.logger, rows)
            return metrics
        frozen = {"routed": routed, "tokenizer": tokenizer} if online else {}
        counts = data.class_counts().tolist()
        module = RouterModule(routers, counts, lr=lr, weight_decay=weight_decay, static=static, **frozen)
        settings = {**run, "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size}
        settings["precision"] = precision
        if trainer.logger is not None:
            trainer.logger.log_hyperparams(settings)
        with warnings.catch_warnings(), outputs.disk_errors(output):
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            fit(trainer, module, data, str(last) if resuming else None)  # Ctrl-C: KeyboardInterrupt
        metrics = _best_routers(routed, checkpoint, last)
        routed.routers.config.verdict = metrics.get("verdict", "")
        if trainer.is_global_zero:
            with outputs.disk_errors(output):
                _finish(routed, metrics, settings, features, data, output, trainer.logger, rows)
    if isinstance(trainer.logger, WandbLogger) and trainer.is_global_zero:
        trainer.logger.experiment.finish()  # flush the run (config, metrics, images) before returning
    return metrics


def _trainer(epochs, logger, output: Path, accelerator, devices, strategy, precision, by_regret=False):
    """The Lightning trainer and its best-epoch callback (Lightning's refusals become a ValueError)."""
    checkpoint, latest = checkpoints(output / "checkpoints", by_regret)
    try:
        trainer = L.Trainer(
            max_epochs=epochs,
            logger=make_logger(logger[0], output, *logger[1:]),
            callbacks=[checkpoint, latest],
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            precision=precision,
            enable_progress_bar=progress.showing(),
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
            default_root_dir=str(output),
        )
    except (MisconfigurationException, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"Lightning refused accelerator={accelerator!r}, devices={devices!r}, strategy={strategy!r}, "
            f"precision={precision!r}: {first}"
        ) from None
    return trainer, checkpoint


def _finish(routed, metrics: dict, settings: dict, features, data, output: Path, logger, rows) -> None:
    """Write routers, ``metrics.json``, ``run.json``, ``trained_on.json`` and ``decisions.png``.

    They replace the old ones last. ``trained_on.json`` lists the ids of the training split's examples: the
    evaluation calibrates budgets on others.
    """
    folder = outputs.staging(output)
    try:
        routed.save_pretrained(folder)
        routed.load_routers(folder)  # checks the saved files against the model; routers on its device, eval
        outputs.write_json(folder / "metrics.json", metrics)
        outputs.write_json(folder / "run.json", settings)
        ids = [outputs.trained_key(rows[i].task, rows[i].id) for i in data.train_indices]  # ids repeat
        outputs.write_json(folder / TRAINED_ON_NAME, {"ids": ids, "qualified": True})
        if features is not None:
            decision_figure(routed, features, data.val_indices, folder, logger)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # a half-written staging folder frees its space at once
        raise
    outputs.publish(folder, output)


def _run_identity(routed, paths, num_windows, bottleneck, val_fraction, seed, online) -> dict:
    """What a checkpoint must share with this run to be resumed: data, model and router shape."""
    digest = hashlib.sha256(Path(paths).read_bytes()).hexdigest()[:16]
    return {
        "paths_sha256": digest,
        "model": routed.fingerprint,
        "num_windows": num_windows,
        "bottleneck": bottleneck,
        "val_fraction": val_fraction,
        "seed": seed,
        "online": online,
    }


def _load(model, tokenizer, accelerator: str, device, dtype=None):
    """The ``RoutedModel`` and tokenizer through ``load_routed`` (the CPU when the accelerator is the CPU)."""
    if device is None and accelerator == "cpu":
        device = "cpu"
    if isinstance(model, RoutedModel):
        return load_routed(model, device=device, dtype=dtype), tokenizer
    routed = load_routed(model, device=device, dtype=dtype)
    return routed, tokenizer if tokenizer is not None else load_tokenizer(str(model))


def _best_routers(routed: RoutedModel, checkpoint: ModelCheckpoint, last: Path) -> dict:
    """Load the best checkpoint's routers into ``routed`` (eval mode) and return its validation metrics."""
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else last
    if not best.is_file():
        best = last
    if not best.is_file():
        raise RuntimeError(f"training wrote no checkpoint in {last.parent}")
    state = load_checkpoint(best)
    prefix = "routers."
    weights = {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    routed.routers.load_state_dict(weights)
    routed.routers.eval()
    return dict(state.get("drllm_val_metrics") or {})
