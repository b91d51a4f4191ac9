"""``drllm generate``: one routed completion, printed with the layers it executed."""

from __future__ import annotations


def generate(
    prompt: str,
    model: str | None = None,
    decisions: str | None = None,
    routers: str | None = None,
    budget: float = 0.0,
    max_new_tokens: int = 40,
    chat: bool | None = None,
    stream: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 50,
    num_beams: int = 1,
    seed: int = 0,
) -> str:
    """Generate a completion with routed layers and print it with the layers executed.

    Args:
        prompt: the prompt text.
        model: model name or path; by default the base model ``--routers`` record, else the embedded
            "smollm2-135m-instruct".
        decisions: a path such as "1,1,0,2,..." or "1102..." (one value per layer: 0 skip, 1 execute,
            2 repeat; 3 runs the layer's MLP alone, 4 its attention alone), or the path generate prints.
        routers: a router directory (router_config.json + routers.safetensors); used when no decisions.
        budget: bias added to every router's skip logit (+ skips more).
        max_new_tokens: tokens to generate.
        chat: wrap the prompt in the tokenizer's chat template (default: when it has one; true refuses a
            tokenizer without one, false uses the prompt as it is).
        stream: print tokens as they are generated.
        device: where the model runs (auto: CUDA when available, else the CPU; or cpu, cuda, cuda:N).
        dtype: the model's dtype (auto or none: the checkpoint's; float32, bfloat16, float16).
        do_sample: sample instead of greedy decoding (with ``temperature``, ``top_p``, ``top_k``, ``seed``).
        temperature: sampling temperature (> 0).
        top_p: nucleus sampling mass, in (0, 1].
        top_k: sample among the k most likely tokens (>= 1).
        num_beams: beam search with this many beams (1: none); the decisions are made once per prompt and
            shared by its beams.
        seed: seed of sampling.
    """
    from drllm.router import batch_prompts, load_routed, load_tokenizer, parse_decisions
    from drllm.router.decisions import format_decisions, layer_applications
    from drllm.search.decoding import greedy_new_tokens

    if not prompt.strip():
        raise ValueError("the prompt is empty")
    if decisions is not None and not str(decisions).strip():
        raise ValueError("--decisions is empty: give one value per layer, or leave the flag out")
    _check_decoding(max_new_tokens, temperature, top_p, top_k, num_beams, stream)
    _check_unused(do_sample, temperature, top_p, top_k, seed, routers, decisions, budget)
    if model is None:
        from drllm.cli.__main__ import default_model

        model = default_model(routers)
    tok = load_tokenizer(model)
    if chat and not getattr(tok, "chat_template", None):
        raise ValueError(
            f"--chat true: the tokenizer of {model} has no chat template; leave --chat out (the template is "
            "used only when there is one) or pass --chat false"
        )
    routed = load_routed(model, device=device, routers=routers, dtype=dtype)
    routed.budget = budget
    path = parse_decisions(decisions, routed.num_layers, units=True) if decisions else None
    text = prompt
    if chat is not False and getattr(tok, "chat_template", None):
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    ids, mask = batch_prompts(tok, [text], routed.device)
    streamer = None
    if stream:
        from transformers import TextStreamer

        streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    context = routed.context_length
    if context is not None and ids.shape[1] + max_new_tokens > context:
        raise ValueError(
            f"the prompt has {ids.shape[1]} tokens; with {max_new_tokens} new tokens that passes the model's "
            f"context of {context} tokens: shorten the prompt or lower --max-new-tokens"
        )
    if do_sample or num_beams > 1:
        import torch

        torch.manual_seed(seed)
        sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k} if do_sample else {}
        out = routed.generate(
            ids, attention_mask=mask, decisions=path, do_sample=do_sample, num_beams=num_beams,
            max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, streamer=streamer, **sampling,
        )  # fmt: skip
        new = out[:, ids.shape[1] :]
    else:
        new = greedy_new_tokens(routed, ids, mask, path, max_new_tokens, tok.pad_token_id, streamer)
    completion = tok.decode(new[0], skip_special_tokens=True)
    used = routed.last_decisions[0]
    layers = int(layer_applications(used))
    if not stream:
        print(completion)
    stood_in = [] if routed.stand_ins is None else [i for i in routed.stand_ins.mapped if int(used[i]) == 0]
    print(
        f"\n[layers executed per token: {layers} of {routed.num_layers}; path {format_decisions(used)}; "
        f"layer applications: {layers * (ids.shape[1] + new.shape[1])}"
        + (f"; linear stand-ins for skipped layers {stood_in}" if stood_in else "")
        + "]"
    )
    return completion


def _check_decoding(max_new_tokens, temperature, top_p, top_k, num_beams, stream) -> None:
    """Refuse decoding settings transformers would reject deep inside ``generate``, naming the flag."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a whole number >= 1, got {top_k!r}")
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be a whole number >= 1, got {num_beams!r}")
    if stream and num_beams > 1:
        raise ValueError("--stream shows one sequence as it comes; beam search keeps several: use one")


def _check_unused(do_sample, temperature, top_p, top_k, seed, routers, decisions, budget) -> None:
    """Refuse a flag that would be silently ignored: sampling settings without sampling, and so on."""
    given = [
        f"--{flag}"
        for flag, value, default in (("temperature", temperature, 1.0), ("top-p", top_p, 1.0),
                                     ("top-k", top_k, 50), ("seed", seed, 0))
        if value != default
    ]  # fmt: skip
    if given and not do_sample:
        raise ValueError(f"{', '.join(given)} only apply when sampling: add --do-sample, or drop them")
    if budget and (routers is None or decisions):
        why = "--decisions fixes the path" if decisions else "no --routers are given"
        raise ValueError(f"--budget biases the routers' skip logits, but {why}: drop --budget")
    if routers is not None and decisions:
        raise ValueError("give either --decisions (a fixed path) or --routers (they decide), not both")
