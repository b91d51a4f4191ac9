"""``RouterModule``: a thin LightningModule around :class:`drllm.router.Routers`.

The loss is the class-balanced focal loss over every (example, layer) pair, with class counts from the
training split. In the online mode the module also holds the frozen ``RoutedModel`` (not registered as a
submodule, so it is neither trained nor saved) and computes the pooled router inputs of each batch from
its prompts. Validation accumulates a confusion matrix, the layers executed and the loss in torchmetrics
states, which are summed over processes under DDP; at the end of each validation epoch every
:func:`~drllm.train.metrics.metrics_from_confusion` key of the whole validation set is logged as
``val/<key>`` (the same value on every rank), with ``val/loss``.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import CatMetric, MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix
from transformers import get_cosine_schedule_with_warmup

from .features import online_pooled
from .loss import focal_loss, soft_focal_loss
from .metrics import metrics_from_confusion, path_layers
from .regret import EDITS, regret_summary, regrets

REGRET_KEYS = tuple(f"regret_{s}{name}" for s in ("", "static_") for name, _ in EDITS)


class RouterModule(L.LightningModule):
    """Trains ``routers`` on pooled inputs (cached batches) or on prompts (online batches).

    Args:
        routers: the ``Routers`` to train (the only trainable parameters).
        class_counts: ``[A]`` counts of each action (skip, execute, repeat, ...) over the training split.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_fraction: share of the optimizer steps spent in linear warmup (at least one step).
        gamma: focal-loss exponent.
        beta: class-balance smoothing.
        routed: the frozen ``RoutedModel``, needed only for online batches.
        tokenizer: its tokenizer, needed only for online batches.
        static: per edit kind (skip, repeat), the static choice's layer; with batches carrying ``gains``,
            validation also logs the regret of the routers and of that static choice
            (``drllm.train.regret``).
    """

    def __init__(
        self,
        routers,
        class_counts,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_fraction: float = 0.05,
        gamma: float = 2.0,
        beta: float = 0.999,
        routed=None,
        tokenizer=None,
        static: list[int] | None = None,
    ):
        super().__init__()
        self.static = static
        self.routers = routers
        self.class_counts = [float(c) for c in torch.as_tensor(class_counts).tolist()]
        self.save_hyperparameters(ignore=["routers", "routed", "tokenizer", "static"])
        object.__setattr__(self, "_routed", routed)  # a plain attribute: never a submodule
        self._tokenizer = tokenizer
        if routed is not None:
            routed.model.requires_grad_(False)
        # validation states, summed over processes when computed (torchmetrics); never in checkpoints
        self.val_confusion = MulticlassConfusionMatrix(num_classes=len(self.class_counts))
        self.val_layers_pred, self.val_layers_target, self.val_loss = MeanMetric(), MeanMetric(), MeanMetric()
        # per example, gathered over processes
        self.val_regrets = torch.nn.ModuleDict({k: CatMetric() for k in REGRET_KEYS})
        self.last_val_metrics: dict[str, float] = {}

    @property
    def routed(self):
        """The frozen ``RoutedModel`` of the online mode (None in the cached mode)."""
        return self._routed

    def forward(self, pooled: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, L, A]`` from pooled inputs ``[N, L, W, d]`` and ``valid [N, L, W]``."""
        return self.routers.forward_pooled(pooled, valid)

    def pooled_inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's pooled inputs: cached, or computed from its prompts with the frozen model."""
        if "pooled" in batch:
            return batch["pooled"], batch["valid"]
        if self._routed is None:
            raise ValueError("an online batch (prompts) needs the module to hold the routed model")
        with torch.no_grad():
            pooled, valid = online_pooled(
                self._routed,
                self._tokenizer,
                batch["prompt"],
                batch["decisions"],
                self.routers.config.num_windows,
                self.routers.config.skip_first,
            )
        return pooled.to(self.device), valid.to(self.device)

    def batch_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(focal loss, logits [N, L, A])`` of one batch."""
        logits = self(*self.pooled_inputs(batch))
        if "targets" in batch:  # soft targets: distributions over the safe paths
            loss = soft_focal_loss(
                logits, batch["targets"], self.class_counts, self.hparams.gamma, self.hparams.beta
            )
        else:
            loss = focal_loss(
                logits, batch["decisions"], self.class_counts, self.hparams.gamma, self.hparams.beta
            )
        return loss, logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Focal loss of a training batch."""
        loss, _ = self.batch_loss(batch)
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch["decisions"].shape[0],
            sync_dist=True,  # the epoch mean over every process's batches under DDP
        )
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Accumulate a validation batch's confusion matrix, layers executed and loss."""
        loss, logits = self.batch_loss(batch)
        target = batch["targets"].argmax(-1) if "targets" in batch else batch["decisions"]
        pred = logits.argmax(-1)  # [N, L], as target
        self.val_confusion.update(pred, target)
        self.val_layers_pred.update(path_layers(pred).float())
        self.val_layers_target.update(path_layers(target).float())
        self.val_loss.update(loss.detach(), weight=target.shape[0])  # mean over examples, not batches
        if "gains" in batch and self.static is not None:
            for key, values in regrets(logits.detach(), batch["gains"], self.static).items():
                self.val_regrets[key].update(values)

    def on_validation_epoch_start(self) -> None:
        """Forget the previous epoch's validation states."""
        for metric in (self.val_confusion, self.val_layers_pred, self.val_layers_target, self.val_loss):
            metric.reset()
        for metric in self.val_regrets.values():
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        """Log every routing metric of the whole validation set (all processes) as ``val/<key>``."""
        cm = self.val_confusion.compute()  # every compute() here sums its states over the processes
        if int(cm.sum()) == 0:
            return
        metrics = metrics_from_confusion(
            cm, self.val_layers_pred.compute().item(), self.val_layers_target.compute().item()
        )
        val_loss = self.val_loss.compute().item()
        # the values are already global; sync_dist only averages equal numbers (and silences Lightning)
        for key, value in metrics.items():
            self.log(f"val/{key}", value, prog_bar=key == "macro_f1", sync_dist=True)
        self.log("val/loss", val_loss, prog_bar=True, sync_dist=True)
        self.last_val_metrics = {**metrics, "epoch": int(self.current_epoch), "val_loss": val_loss}
        if self.val_regrets["regret_skip"].update_count:
            per_example = {k: m.compute().flatten().cpu() for k, m in self.val_regrets.items()}
            summary = regret_summary(per_example, selected=True)
            for key in ("regret", "regret_static"):
                self.log(f"val/{key}", summary[key], prog_bar=key == "regret", sync_dist=True)
            self.last_val_metrics.update(summary)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store the latest validation metrics beside the weights (read back for ``metrics.json``)."""
        checkpoint["drllm_val_metrics"] = dict(self.last_val_metrics)

    def on_fit_start(self) -> None:
        """Refuse trainable base-model parameters; report the trainable (router) parameter count."""
        if self._routed is not None:
            self._routed.to(self.device)
            trainable = [n for n, p in self._routed.model.named_parameters() if p.requires_grad]
            if trainable:
                raise RuntimeError(f"the base model must be frozen; trainable: {trainable[:3]}")
        count = sum(p.numel() for p in self.parameters() if p.requires_grad)
        if count != sum(p.numel() for p in self.routers.parameters()):
            raise RuntimeError("only router parameters may train")
        rank_zero_info(f"trainable parameters (routers only): {count:,}")
        if self.logger is not None:
            self.logger.log_hyperparams({"trainable_params": count})

    def configure_optimizers(self):
        """AdamW with linear warmup then cosine decay, stepped every optimizer step."""
        optimizer = torch.optim.AdamW(
            self.routers.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, math.ceil(total * self.hparams.warmup_fraction))
        schedule = get_cosine_schedule_with_warmup(optimizer, warmup, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
