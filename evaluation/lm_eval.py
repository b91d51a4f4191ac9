r"""lm-evaluation-harness adapter: evaluate a routed model on any harness task (optional extra ``lm-eval``).

    python -m drllm.evaluation.lm_eval --model drllm \\
        --model_args pretrained=smollm2-135m-instruct,routers=runs/demo/routers,budget=0.5 --tasks arc_easy

Importing this module registers the model type ``drllm`` (the harness has no plugin discovery, so run it
through this module, or import it before calling ``lm_eval.simple_evaluate``). Model arguments:
``pretrained`` (name, folder or RoutedModel), ``routers`` (directory), ``budget`` (skip-logit bias) and
``decisions`` (a fixed path written "1/1/0/2/...", as model_args are comma-separated); every other HFLM
argument passes through. Log-likelihood and generation requests both run routed; the layers executed are
printed when the run ends.

Note: for log-likelihood requests the harness gives the model context + continuation in one row (and, with
batch sizes above 1, right padding without a mask), so routers read that whole row; with batch size 1 it is
exactly the request's tokens.
"""

from __future__ import annotations

import sys

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils_hf import stop_sequences_criteria

from drllm.router import RoutedModel, check_budget, load_routed, load_tokenizer, parse_decisions

INSTANCES: list[DrLLMEval] = []


@register_model("drllm")
class DrLLMEval(HFLM):
    """HFLM whose forward passes and generation run through a ``RoutedModel``."""

    def __init__(self, pretrained, routers=None, budget: float = 0.0, decisions: str | None = None, **kwargs):
        budget = check_budget(budget)  # before loading anything: model_args pass "nan" as a string
        device = kwargs.pop("device", None)
        if not isinstance(pretrained, RoutedModel):
            kwargs.setdefault("tokenizer", load_tokenizer(str(pretrained)))
        routed = load_routed(pretrained, device=device, routers=routers)
        routed.budget = budget
        kwargs["device"] = str(routed.device)
        super().__init__(pretrained=routed.model, **kwargs)
        self.routed = routed
        path = str(decisions).replace("/", ",") if decisions else None  # model_args split on commas
        self.fixed = parse_decisions(path, routed.num_layers) if path else None
        self.layer_counts: list[int] = []
        INSTANCES.append(self)

    def _remember(self) -> None:
        if self.routed.last_decisions is not None:
            self.layer_counts += self.routed.last_decisions.sum(-1).tolist()

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        """Logits of a routed forward pass (decisions made once per row).

        The harness right-pads a causal batch with token 0 and passes no mask. Padding after a row changes
        none of its logits (attention is causal), but routers would pool it: they pool each row up to its
        last nonzero token, so a row routes the same at every batch size.
        """
        ones = torch.ones_like(inps)
        pool = attn_mask if attn_mask is not None else _before_trailing_zeros(inps)
        with torch.no_grad():
            hidden = self.routed.backbone(inps, ones, self.fixed, route_mask=pool)
            logits = self.routed.lm_logits(hidden)
        self._remember()
        return logits

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs) -> torch.Tensor:
        """Routed generation with the harness's stop sequences; greedy unless sampling is asked for."""
        generation_kwargs.setdefault("do_sample", False)
        if not generation_kwargs["do_sample"]:
            generation_kwargs.pop("temperature", None)
        criteria = stop_sequences_criteria(self.tokenizer, stop, context.shape[1], context.shape[0])
        out = self.routed.generate(
            context,
            decisions=self.fixed,
            max_length=max_length,
            stopping_criteria=criteria,
            pad_token_id=self.tokenizer.pad_token_id,
            **generation_kwargs,
        )
        self._remember()
        return out

    @property
    def mean_layers(self) -> float:
        """Mean layers executed per row over every request so far."""
        return sum(self.layer_counts) / max(len(self.layer_counts), 1)


def _before_trailing_zeros(ids: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` mask, 1 up to each row's last nonzero token (the harness pads on the right with 0)."""
    nonzero = (ids != 0).long()
    last = ids.shape[1] - 1 - nonzero.flip(1).argmax(1)  # [B]
    last = torch.where(nonzero.any(1), last, torch.zeros_like(last))  # an all-zero row keeps its first token
    return (torch.arange(ids.shape[1], device=ids.device)[None] <= last[:, None]).long()


def main(argv: list[str] | None = None) -> None:
    """Run the harness's command line with the ``drllm`` model type registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
    for model in INSTANCES:
        print(
            f"drllm: {len(model.layer_counts)} routed rows, {model.mean_layers:.2f} of "
            f"{model.routed.num_layers} layers executed per row"
        )


if __name__ == "__main__":
    main()
