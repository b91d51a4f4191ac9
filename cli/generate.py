"""``drllm generate``: one routed completion, printed with the layers it executed."""

from __future__ import annotations

from drllm.router import DEFAULT_MODEL


def generate(
    prompt: str,
    model: str = DEFAULT_MODEL,
    decisions: str | None = None,
    routers: str | None = None,
    budget: float = 0.0,
    max_new_tokens: int = 40,
    chat: bool = True,
    stream: bool = False,
    device: str | None = None,
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
        device: where the model runs (auto: CUDA when available, else the CPU; or cpu, cuda, cuda:N).
    """
    from drllm.router import batch_prompts, load_routed, load_tokenizer, parse_decisions
    from drllm.router.decisions import format_decisions
    from drllm.search.evaluator import greedy_new_tokens

    if not prompt.strip():
        raise ValueError("the prompt is empty")
    routed = load_routed(model, device=device, routers=routers)
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
    new = greedy_new_tokens(routed, ids, mask, path, max_new_tokens, tok.pad_token_id, streamer)
    completion = tok.decode(new[0], skip_special_tokens=True)
    used = routed.last_decisions[0]
    layers = int(used.sum())
    if not stream:
        print(completion)
    print(
        f"\n[layers executed per token: {layers} of {routed.num_layers}; path {format_decisions(used)}; "
        f"layer applications: {layers * (ids.shape[1] + new.shape[1])}]"
    )
    return completion
