"""Lightning's side of label training: checkpoint callbacks, the logger and the logged decisions figure."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from drllm.search.tracking import check_tags, wandb_offline

MONITOR = "val/macro_f1"
REGRET = "val/regret"


def fit(trainer, module, data, ckpt_path: str | None) -> None:
    """``trainer.fit``, a Ctrl-C raised again as ``KeyboardInterrupt``.

    Lightning catches the interrupt, leaves SIGINT ignored and exits with status 1; raised again, the
    ``drllm`` command says what is kept (``last.ckpt`` of the finished epochs) and exits 130, as others do.
    """
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    except SystemExit:
        if not trainer.interrupted:
            raise
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
        raise KeyboardInterrupt from None


def checkpoints(folder: Path, by_regret: bool = False) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """The best epoch by validation regret (every record has a sweep) or macro F1, and ``last.ckpt``.

    ``last.ckpt`` is rewritten after every epoch.

    Both save at the end of the training epoch (after validation), so ``last.ckpt`` resumes at the next
    epoch. ``save_last=True`` is not used: Lightning 2.6 writes ``last.ckpt`` only in epochs that improve
    the monitored metric, so a resumed run would repeat epochs.
    """
    best = ModelCheckpoint(
        dirpath=folder,
        monitor=REGRET if by_regret else MONITOR,
        mode="min" if by_regret else "max",
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


def make_logger(kind: str | None, output: Path, project: str | None = None, name=None, tags=None):
    """A CSV or Weights & Biases logger writing under ``output`` (or False for none).

    W&B goes online when it has credentials (``wandb login`` or ``WANDB_API_KEY``), as ``drllm search`` does.
    """
    if kind == "csv":
        return CSVLogger(str(output), name="logs")
    if kind == "wandb":
        return WandbLogger(
            project=project or "drllm",
            name=name,
            tags=check_tags(tags),
            save_dir=str(output),
            offline=wandb_offline(),
        )
    return False


def decision_figure(routed, features, val_indices, output: Path, logger) -> None:
    """``decisions.png``: what the exported routers decide per layer on the validation paths (also to W&B)."""
    from drllm.evaluation.plots import plot_decisions

    rows = torch.as_tensor(val_indices, dtype=torch.long)
    if rows.numel() == 0:
        return
    device = routed.device
    with torch.no_grad():
        logits = routed.routers.forward_pooled(
            features.pooled[rows].to(device), features.valid[rows].to(device)
        )
    path = output / "decisions.png"
    plot_decisions(logits.argmax(-1).cpu().numpy(), path, title="router decisions on validation paths")
    if isinstance(logger, WandbLogger):
        logger.log_image(key="val/decisions", images=[str(path)])
