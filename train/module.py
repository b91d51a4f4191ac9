"""``RouterModule``: a thin LightningModule around :class:`drllm.router.Routers`.

The loss is the class-balanced focal loss over every (example, layer) pair, with class counts from the
training split. In the online mode the module also holds the frozen ``RoutedModel`` (not registered as a
submodule, so it is neither trained nor saved) and computes the pooled router inputs of each batch from
its prompts. At the end of each validation epoch every :func:`~drllm.train.metrics.routing_metrics` key
is logged as ``val/<key>``.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from .features import online_pooled
from .loss import focal_loss
from .metrics import routing_metrics


def warmup_cosine(total_steps: int, warmup_fraction: float = 0.05):
    """LR multiplier for step s: linear warmup over ``warmup_fraction`` of the steps, then cosine to 0."""
    warmup = max(1, math.ceil(total_steps * warmup_fraction))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


class RouterModule(L.LightningModule):
    """Trains ``routers`` on pooled inputs (cached batches) or on prompts (online batches).

    Args:
        routers: the ``Routers`` to train (the only trainable parameters).
        class_counts: ``[3]`` skip / execute / repeat counts over the training split.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_fraction: share of the optimizer steps spent in linear warmup.
        gamma: focal-loss exponent.
        beta: class-balance smoothing.
        routed: the frozen ``RoutedModel``, needed only for online batches.
        tokenizer: its tokenizer, needed only for online batches.
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
    ):
        super().__init__()
        self.routers = routers
        self.class_counts = [int(c) for c in torch.as_tensor(class_counts).tolist()]
        self.save_hyperparameters(ignore=["routers", "routed", "tokenizer"])
        object.__setattr__(self, "_routed", routed)  # a plain attribute: never a submodule
        self._tokenizer = tokenizer
        if routed is not None:
            routed.model.requires_grad_(False)
        self._val_preds: list[torch.Tensor] = []
        self._val_targets: list[torch.Tensor] = []
        self._val_losses: list[tuple[float, int]] = []
        self.last_val_metrics: dict[str, float] = {}

    @property
    def routed(self):
        """The frozen ``RoutedModel`` of the online mode (None in the cached mode)."""
        return self._routed

    def forward(self, pooled: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, L, 3]`` from pooled inputs ``[N, L, W, d]`` and ``valid [N, L, W]``."""
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
            )
        return pooled.to(self.device), valid.to(self.device)

    def batch_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(focal loss, logits [N, L, 3])`` of one batch."""
        logits = self(*self.pooled_inputs(batch))
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
        )
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Loss of a validation batch; predictions kept for the epoch's metrics."""
        loss, logits = self.batch_loss(batch)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=batch["decisions"].shape[0])
        self._val_preds.append(logits.argmax(-1).cpu())
        self._val_targets.append(batch["decisions"].cpu())
        self._val_losses.append((float(loss), batch["decisions"].shape[0]))

    def on_validation_epoch_start(self) -> None:
        """Forget the previous epoch's predictions."""
        self._val_preds, self._val_targets, self._val_losses = [], [], []

    def on_validation_epoch_end(self) -> None:
        """Log every routing metric of the epoch as ``val/<key>``."""
        if not self._val_preds:
            return
        metrics = routing_metrics(torch.cat(self._val_preds), torch.cat(self._val_targets))
        for key, value in metrics.items():
            self.log(f"val/{key}", value, prog_bar=key == "macro_f1")
        val_loss = sum(loss * n for loss, n in self._val_losses) / sum(n for _, n in self._val_losses)
        self.last_val_metrics = {**metrics, "epoch": int(self.current_epoch), "val_loss": val_loss}

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
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(total, self.hparams.warmup_fraction)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
