"""``train_routers``: from a search's paths file to saved routers and their validation metrics.

    metrics = train_routers("smollm2-135m-instruct", "runs/arc/paths.jsonl", "runs/arc/routers")

Steps: load the model and tokenizer (or take them), read and check the paths, build (or reuse) the
teacher-forced feature cache, attach fresh seeded routers, train them with Lightning (checkpoints in
``<output>/checkpoints``, resumed from ``last.ckpt``), then save the best epoch's routers as
``router_config.json`` + ``routers.safetensors`` and its validation metrics as ``metrics.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from drllm.router import RoutedModel, load_routed, load_tokenizer
from drllm.search import progress
from drllm.search.records import read_records

from .data import RouterDataModule
from .features import build_features
from .module import RouterModule

MONITOR = "val/macro_f1"


def train_routers(
    model: str,
    paths: str,
    output: str,
    epochs: int = 25,
    num_windows: int = 8,
    bottleneck: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    batch_size: int = 16,
    val_fraction: float = 0.1,
    seed: int = 0,
    logger: str | None = "csv",
    accelerator: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    precision: str = "32-true",
    online: bool = False,
    cache_dir: str | None = None,
    resume: bool = True,
    tokenizer=None,
    device: str | None = None,
) -> dict:
    """Train routers on the paths found by search and save the best epoch's routers in ``output``.

    Args:
        model: a model name or folder (``RoutedModel.from_pretrained``), or an already built ``RoutedModel``.
        paths: the search's JSONL output.
        output: folder for routers, ``metrics.json``, checkpoints, logs and the feature cache.
        epochs: training epochs (a resumed run continues up to this many in all).
        num_windows: W, windows pooled per prompt.
        bottleneck: router bottleneck width (hidden units of each layer's router MLP).
        lr: AdamW learning rate (warmup then cosine decay).
        weight_decay: AdamW weight decay.
        batch_size: examples per batch (features are built in batches of the same size).
        val_fraction: share of examples held out for validation, split by example with ``seed``.
        seed: seed of the split, the routers' initial weights and the shuffling.
        logger: ``"csv"``, ``"wandb"`` (offline without an API key) or ``None``/``"none"``.
        accelerator: Lightning accelerator.
        devices: Lightning devices.
        strategy: Lightning strategy.
        precision: Lightning precision.
        online: run the frozen model every step instead of caching its pooled hidden states.
        cache_dir: feature cache folder; defaults to ``<output>/feature_cache``.
        resume: continue from ``<output>/checkpoints/last.ckpt`` when it exists.
        tokenizer: the tokenizer, required when ``model`` is a ``RoutedModel``.
        device: where the frozen model runs while features are built (``load_routed``'s policy: CUDA when
            available; the CPU when ``accelerator="cpu"``).

    Returns:
        The best epoch's validation metrics (``routing_metrics`` keys, ``epoch``, ``val_loss``).
    """
    routed, tokenizer = _load(model, tokenizer, accelerator, device)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    rows = read_records(paths, routed.num_layers)
    routed.model.requires_grad_(False)
    if online:
        data = RouterDataModule(rows=rows, batch_size=batch_size, val_fraction=val_fraction, seed=seed)
    else:
        cache_dir = cache_dir or output / "feature_cache"
        features = build_features(routed, tokenizer, rows, num_windows, batch_size, cache_dir)
        data = RouterDataModule(
            features=features, batch_size=batch_size, val_fraction=val_fraction, seed=seed
        )
    L.seed_everything(seed, verbose=False)
    routers = routed.add_routers(num_windows=num_windows, bottleneck=bottleneck, seed=seed).train()
    frozen = {"routed": routed, "tokenizer": tokenizer} if online else {}
    module = RouterModule(routers, data.class_counts().tolist(), lr=lr, weight_decay=weight_decay, **frozen)
    checkpoint, latest = _checkpoints(output / "checkpoints")
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=_logger(logger, output),
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
    last = output / "checkpoints" / "last.ckpt"
    run = _run_identity(routed, paths, num_windows, bottleneck, val_fraction, seed, online)
    resuming = resume and last.is_file()
    _check_resume(output / "run.json", run, resuming)
    if trainer.logger is not None:
        trainer.logger.log_hyperparams(
            {
                **run,
                "epochs": epochs,
                "lr": lr,
                "weight_decay": weight_decay,
                "batch_size": batch_size,
                "precision": precision,
            }
        )
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resuming else None)
    metrics = _export(routed, checkpoint, last, output, write=trainer.is_global_zero)
    if not online and trainer.is_global_zero:
        _decision_figure(routed, features, data.val_indices, output, trainer.logger)
    if isinstance(trainer.logger, WandbLogger) and trainer.is_global_zero:
        trainer.logger.experiment.finish()  # flush the run (config, metrics, images) before returning
    return metrics


def _decision_figure(routed, features, val_indices, output: Path, logger) -> None:
    """``decisions.png``: what the exported routers decide per layer on the validation paths (also to W&B)."""
    from drllm.evaluation.plots import plot_decisions

    rows = torch.as_tensor(val_indices, dtype=torch.long)
    if rows.numel() == 0:
        return
    device = next(routed.routers.parameters()).device
    with torch.no_grad():
        logits = routed.routers.forward_pooled(
            features.pooled[rows].to(device), features.valid[rows].to(device)
        )
    path = output / "decisions.png"
    plot_decisions(logits.argmax(-1).cpu().numpy(), path, title="router decisions on validation paths")
    if isinstance(logger, WandbLogger):
        logger.log_image(key="val/decisions", images=[str(path)])


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


def read_run_record(record: Path) -> dict:
    """The identity a checkpoint was trained with (``run.json``); a damaged record is refused by name."""
    try:
        saved = json.loads(record.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        saved, problem = None, str(err)
    else:
        problem = "not a JSON object"
    if not isinstance(saved, dict):
        raise ValueError(
            f"{record} is damaged ({problem}), so the checkpoint beside it cannot be checked; "
            "use another --output or --resume false to start over"
        )
    return saved


def _check_resume(record: Path, run: dict, resuming: bool) -> None:
    """Refuse to resume a checkpoint made from other paths or settings; record this run's identity."""
    if resuming and record.is_file():
        saved = read_run_record(record)
        if "hidden_size" in saved and "bottleneck" not in saved:  # records before the rename
            saved["bottleneck"] = saved.pop("hidden_size")
        differ = {k: (saved.get(k), v) for k, v in run.items() if saved.get(k) != v}
        if differ:
            details = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise ValueError(
                f"{record.parent / 'checkpoints' / 'last.ckpt'} was trained with other inputs ({details}); "
                "use another --output or --resume false to start over"
            )
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(run, indent=2) + "\n")
    os.replace(tmp, record)


def _load(model, tokenizer, accelerator: str, device):
    """The ``RoutedModel`` and tokenizer through ``load_routed`` (the CPU when the accelerator is the CPU)."""
    if device is None and accelerator == "cpu":
        device = "cpu"
    if isinstance(model, RoutedModel):
        if tokenizer is None:
            raise ValueError("train_routers got a RoutedModel without its tokenizer; pass tokenizer=")
        return load_routed(model, device=device), tokenizer
    routed = load_routed(model, device=device)
    return routed, tokenizer if tokenizer is not None else load_tokenizer(str(model))


def _checkpoints(folder: Path) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """The best epoch by validation macro F1, and ``last.ckpt`` rewritten after every epoch.

    Both save at the end of the training epoch (after validation), so ``last.ckpt`` resumes at the next
    epoch. ``save_last=True`` is not used: Lightning 2.6 writes ``last.ckpt`` only in epochs that improve
    the monitored metric, so a resumed run would repeat epochs.
    """
    best = ModelCheckpoint(
        dirpath=folder,
        monitor=MONITOR,
        mode="max",
        save_top_k=1,
        filename="best-epoch{epoch:03d}",
        auto_insert_metric_name=False,
        save_on_train_epoch_end=True,
    )
    latest = ModelCheckpoint(
        dirpath=folder,
        monitor=None,
        save_top_k=1,
        filename="last",
        enable_version_counter=False,
        save_on_train_epoch_end=True,
    )
    return best, latest


def _logger(kind: str | None, output: Path):
    """A CSV or Weights & Biases logger writing under ``output`` (or False for none)."""
    if kind in (None, False, "none", ""):
        return False
    if kind == "csv":
        return CSVLogger(str(output), name="logs")
    if kind == "wandb":
        offline = os.environ.get("WANDB_MODE") == "offline" or not os.environ.get("WANDB_API_KEY")
        return WandbLogger(project="drllm", save_dir=str(output), offline=offline)
    raise ValueError(f"logger must be 'csv', 'wandb' or 'none', got {kind!r}")


def _export(routed: RoutedModel, checkpoint: ModelCheckpoint, last: Path, output: Path, write: bool) -> dict:
    """Load the best checkpoint's routers; save them and ``metrics.json`` when ``write``; return the metrics.

    Under DDP every process loads the routers, and only rank 0 (``write``) writes the files.
    """
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else last
    if not best.is_file():
        best = last
    if not best.is_file():
        raise RuntimeError(f"training wrote no checkpoint in {last.parent}")
    state = torch.load(best, map_location="cpu", weights_only=False)
    prefix = "routers."
    weights = {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    routed.routers.load_state_dict(weights)
    metrics = dict(state.get("drllm_val_metrics") or {})
    if not write:
        routed.routers.eval()
        return metrics
    routed.save_pretrained(output)
    routed.load_routers(output)  # checks the saved files against the model; routers on its device, eval
    tmp = output / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, output / "metrics.json")
    return metrics
