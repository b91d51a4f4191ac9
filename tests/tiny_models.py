"""Tiny random causal LMs, one per supported architecture, built offline from configs (seeded)."""

from __future__ import annotations

import contextlib
import copy

import torch
import transformers as tf

VOCAB = 96
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    num_hidden_layers=4,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def _configs():
    return {
        "llama": tf.LlamaConfig(**COMMON),
        "mistral": tf.MistralConfig(**COMMON, sliding_window=6),
        "qwen2": tf.Qwen2Config(**COMMON),
        "qwen3": tf.Qwen3Config(**COMMON, head_dim=8),
        "gemma3_text": tf.Gemma3TextConfig(
            **COMMON,
            head_dim=8,
            sliding_window=5,
            query_pre_attn_scalar=8,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        ),
        "phi3": tf.Phi3Config(**COMMON),
        "olmo2": tf.Olmo2Config(**COMMON),
        "gpt_neox": tf.GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=4,
            max_position_embeddings=128,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        "gpt2": tf.GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=4,
            n_head=4,
            n_positions=128,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
    }


ARCHITECTURES = sorted(_configs())


def tiny_model(arch: str = "llama", seed: int = 0, **overrides) -> torch.nn.Module:
    """A fresh tiny model in eval mode (eager attention, float32)."""
    config = _configs()[arch]
    for key, value in overrides.items():
        setattr(config, key, value)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    n = sum(p.numel() for p in model.parameters())
    assert n < 200_000, f"{arch} tiny model has {n} parameters: a config key is misspelled"
    return model


class _Replaced(torch.nn.Module):
    """An explicit stand-in: runs a copy of the layer for its output form, then puts ``fn(input, out)``."""

    def __init__(self, layer, fn):
        super().__init__()
        self.layer, self.fn = layer, fn

    def __getattr__(self, name):  # attention_type and the like, as the model's loop reads them
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["layer"], name)

    def forward(self, hidden_states, *args, **kwargs):
        out = self.layer(hidden_states, *args, **kwargs)
        first = out[0] if isinstance(out, tuple) else out
        new = self.fn(hidden_states, first)
        return (new, *out[1:]) if isinstance(out, tuple) else new


class _Zero(torch.nn.Module):
    """An explicit switched-off unit: zeros shaped like its input (attention also returns no weights)."""

    def __init__(self, attention: bool):
        super().__init__()
        self.attention = attention

    def forward(self, *args, **kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (torch.zeros_like(hidden), None) if self.attention else torch.zeros_like(hidden)


ATTENTION_NAMES = ("self_attn", "attn", "attention")


def explicit_model(model: torch.nn.Module, decisions, stand_ins=None) -> torch.nn.Module:
    """A deep copy of ``model`` whose layer list is the expanded path (repeats as separate copies).

    With ``stand_ins``, a skipped layer with a linear map becomes a module applying it, and a repeat with
    scale alpha becomes a copy whose update is scaled by alpha: the unrolled form of ``router.stand_ins``.
    """
    from drllm.router import expand_path, layer_list
    from drllm.router.surgery import LAYER_PATHS

    order = expand_path(decisions)
    mapped = (
        [] if stand_ins is None else [i for i, d in enumerate(decisions) if d == 0 and stand_ins.has_map(i)]
    )
    slots = sorted([(i, 0) for i in order] + [(i, -1) for i in mapped])  # (layer, 0) runs, (layer, -1) maps
    clone = copy.deepcopy(model)
    originals = list(layer_list(clone))
    types = getattr(clone.config, "layer_types", None)
    new, seen = [], set()
    for j, (i, kind) in enumerate(slots):
        layer = copy.deepcopy(originals[i])
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = j
        if int(decisions[i]) in (3, 4):  # one unit off: the attention (3) or the MLP (4) becomes zeros
            name = next(n for n in ATTENTION_NAMES if hasattr(layer, n)) if int(decisions[i]) == 3 else "mlp"
            setattr(layer, name, _Zero(attention=int(decisions[i]) == 3))
        if kind == -1:
            layer = _Replaced(layer, lambda h, out, i=i: stand_ins.apply(i, h))
        elif i in seen and stand_ins is not None and float(stand_ins.repeat_scale[i]) != 1.0:
            alpha = float(stand_ins.repeat_scale[i])
            layer = _Replaced(layer, lambda h, out, a=alpha: h + a * (out - h))
        seen.add(i)
        new.append(layer)
    order = [i for i, _ in slots]
    parent_path, _, name = LAYER_PATHS[clone.config.model_type].rpartition(".")
    parent = clone
    for part in parent_path.split("."):
        parent = getattr(parent, part)
    setattr(parent, name, torch.nn.ModuleList(new))
    for key in ("num_hidden_layers", "n_layer"):
        if hasattr(clone.config, key):
            setattr(clone.config, key, len(order))
    if types is not None:
        clone.config.layer_types = [types[i] for i in order]
    return clone


def prompts(batch: int = 3, length: int = 9, seed: int = 1, pad_rows: int = 1):
    """Left-padded random prompts ``(input_ids, attention_mask)``; the first ``pad_rows`` rows are shorter."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for r in range(min(pad_rows, batch)):
        mask[r, : 2 + r] = 0
        ids[r, : 2 + r] = 0
    return ids, mask


CHARS = " abcdefghijklmnopqrstuvwxyz0123456789.,?:!'-\nABCDEFGHIJKLMNOPQRSTUVWXYZ#$+=()"


def tiny_tokenizer(chat: bool = False):
    """A character-level tokenizer whose ids fit the tiny models' vocabulary (pad 0, bos 1, eos 2, unk 3)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({c: 4 + k for k, c in enumerate(CHARS)})
    assert len(vocab) <= VOCAB
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tok.padding_side = "left"
    if chat:
        tok.chat_template = (
            "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}"
        )
    return tok


@contextlib.contextmanager
def plain_layer_states(model):
    """Record, in a plain (unwrapped) model, the state entering every layer, then its last layer's output."""
    from drllm.router import layer_list

    seen, layers = [], layer_list(model)
    hooks = [
        layer.register_forward_pre_hook(
            lambda mod, args, kwargs: seen.append(args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True,
        )
        for layer in layers
    ]
    hooks.append(
        layers[-1].register_forward_hook(
            lambda mod, a, out: seen.append(out[0] if isinstance(out, tuple) else out)
        )
    )
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def assert_rows_generate_alone(routed, ids, mask, decisions, new_tokens: int = 5) -> None:
    """Greedy generation of a mixed batch: cached equals uncached, and each row equals that row alone.

    A row alone stops at its end of sequence where the batch pads it, so the new tokens are compared up to
    the row's own end and the rest must be padding (0).
    """
    kw = dict(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    batch = routed.generate(ids, attention_mask=mask, decisions=decisions, **kw)
    uncached = routed.generate(ids, attention_mask=mask, decisions=decisions, use_cache=False, **kw)
    assert torch.equal(batch, uncached)
    for r in range(ids.shape[0]):
        keep = mask[r].bool()
        alone = routed.generate(ids[r : r + 1, keep], decisions=decisions[r], **kw)[0, int(keep.sum()) :]
        new = batch[r, ids.shape[1] :]
        assert torch.equal(new[: len(alone)], alone) and not new[len(alone) :].any()


def assert_equals_explicit(
    routed, explicit, ids, mask, path, explicit_cache=None, atol: float = 1e-5
) -> None:
    """Routed logits and greedy generation (cached and not) along ``path`` equal the explicit model's.

    ``explicit_cache``: a cache for the explicit model's generation (default: its own).
    """
    import inspect

    with torch.no_grad():
        ref = explicit(input_ids=ids, attention_mask=mask).logits
        out = routed(ids, attention_mask=mask, decisions=torch.tensor(path)).logits
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    cached = routed.generate(ids, decisions=path, **kw)
    assert torch.equal(cached, routed.generate(ids, decisions=path, use_cache=False, **kw))
    if explicit_cache is not None:
        name = "cache" if "cache" in inspect.signature(explicit.forward).parameters else "past_key_values"
        kw[name] = explicit_cache
    assert torch.equal(cached, explicit.generate(ids, **kw))
