"""Tests of the teacher-forced feature cache and of the cached vs online training modes."""

import dataclasses
import random

import pytest
import tokenizers
import torch
import transformers
from tiny_models import tiny_model

from drllm.router import RoutedModel
from drllm.search.records import SearchRecord
from drllm.train.data import RouterDataModule
from drllm.train.features import FeatureSet, build_features, cache_key, online_pooled
from drllm.train.module import RouterModule

WORDS = [f"w{i}" for i in range(4, 96)]


def tiny_tokenizer():
    """A whitespace word-level tokenizer whose ids fit the tiny models' vocabulary (pad id 0)."""
    vocab = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, "[UNK]": 3, **{w: i for i, w in enumerate(WORDS, start=4)}}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]"
    )
    tok.padding_side = "left"
    return tok


def synthetic_rows(n=20, num_layers=4, seed=0):
    """Records as the search writes them, with prompts of 2 to 12 words and mixed decisions."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
        decisions = [rng.choice([0, 1, 1, 1, 2]) for _ in range(num_layers)]
        rows.append(
            SearchRecord(
                id=f"ex{i}",
                task="toy",
                model="tiny",
                prompt=prompt,
                target="w5",
                decisions=decisions,
                reward=1.0,
                base_reward=0.0,
                correct_paths=[decisions],
                simulations=5,
            )
        )
    return rows


def write_rows(path, rows):
    path.write_text("".join(r.to_json() + "\n" for r in rows))
    return path


@pytest.fixture
def routed():
    return RoutedModel.from_pretrained(tiny_model("llama"))


def _count_calls(monkeypatch, routed):
    calls = []
    original = routed.layer_inputs

    def counting(*args, **kwargs):
        calls.append(args[0].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(routed, "layer_inputs", counting)
    return calls


def test_features_shapes_and_row_order(routed):
    tok, rows = tiny_tokenizer(), synthetic_rows(7)
    features = build_features(routed, tok, rows, num_windows=4, batch_size=3)
    assert features.pooled.shape == (7, 4, 4, 32) and features.pooled.dtype == torch.float32
    assert features.valid.shape == (7, 4, 4) and features.valid.dtype == torch.bool
    assert features.ids == [r.id for r in rows]
    assert features.decisions.tolist() == [r.decisions for r in rows]
    # each row equals the same row computed alone (length-sorted batching does not reorder rows)
    for i in (0, 5):
        pooled, valid = online_pooled(routed, tok, [rows[i].prompt], features.decisions[i : i + 1], 4)
        torch.testing.assert_close(features.pooled[i], pooled[0], atol=1e-4, rtol=1e-4)
        assert torch.equal(features.valid[i], valid[0])


def test_cache_is_reused_and_keyed_by_windows(routed, tmp_path, monkeypatch):
    tok, rows = tiny_tokenizer(), synthetic_rows(6)
    calls = _count_calls(monkeypatch, routed)
    first = build_features(routed, tok, rows, 4, batch_size=4, cache_dir=tmp_path)
    assert len(calls) == 2
    second = build_features(routed, tok, rows, 4, batch_size=4, cache_dir=tmp_path)
    assert len(calls) == 2, "the second build must read the cache, not run the model"
    assert torch.equal(first.pooled, second.pooled) and first.ids == second.ids
    assert not list(tmp_path.glob("*.tmp"))
    assert cache_key(routed, rows, 4) != cache_key(routed, rows, 2)
    changed = list(rows)
    other = [0, 1, 1, 1] if rows[0].decisions != [0, 1, 1, 1] else [1, 1, 1, 1]
    changed[0] = dataclasses.replace(rows[0], decisions=other, layers=None)
    assert cache_key(routed, rows, 4) != cache_key(routed, changed, 4)
    build_features(routed, tok, rows, 2, batch_size=4, cache_dir=tmp_path)
    assert len(calls) == 4 and len(list(tmp_path.glob("*.safetensors"))) == 2


def test_feature_set_round_trip(routed, tmp_path):
    features = build_features(routed, tiny_tokenizer(), synthetic_rows(3), 3)
    features.save(tmp_path / "f.safetensors")
    loaded = FeatureSet.load(tmp_path / "f.safetensors")
    assert loaded.ids == features.ids and torch.equal(loaded.valid, features.valid)
    assert torch.equal(loaded.pooled, features.pooled) and torch.equal(loaded.decisions, features.decisions)


def _modules(routed, rows, tok):
    features = build_features(routed, tok, rows, 4, batch_size=len(rows))
    counts = RouterDataModule(features=features, val_fraction=0.2).class_counts()
    routers = routed.add_routers(num_windows=4, bottleneck=16, seed=0)
    cached = RouterModule(routers, counts)
    online = RouterModule(routers, counts, routed=routed, tokenizer=tok)
    return features, cached, online


def test_cached_and_online_give_the_same_loss(routed):
    tok, rows = tiny_tokenizer(), synthetic_rows(8)
    features, cached, online = _modules(routed, rows, tok)
    batch_cached = {"pooled": features.pooled, "valid": features.valid, "decisions": features.decisions}
    batch_online = {"prompt": [r.prompt for r in rows], "decisions": features.decisions}
    loss_cached, logits_cached = cached.batch_loss(batch_cached)
    loss_online, logits_online = online.batch_loss(batch_online)
    torch.testing.assert_close(logits_cached, logits_online, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_cached, loss_online, atol=1e-6, rtol=1e-5)


def test_only_router_parameters_get_gradients(routed):
    tok, rows = tiny_tokenizer(), synthetic_rows(5)
    _, _, online = _modules(routed, rows, tok)
    loss, _ = online.batch_loss(
        {"prompt": [r.prompt for r in rows], "decisions": torch.tensor([r.decisions for r in rows])}
    )
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in routed.model.parameters())
    assert all(p.grad is not None for p in online.routers.parameters())
    # the frozen model is not a submodule of the LightningModule: checkpoints hold router weights only
    assert all(k.startswith("routers.") for k in online.state_dict())


def test_a_damaged_cache_file_is_rebuilt_never_used(routed, tmp_path):
    tok = tiny_tokenizer()
    rows = synthetic_rows(6)
    first = build_features(routed, tok, rows, 4, batch_size=4, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("*.safetensors")
    cached.write_bytes(
        cached.read_bytes()[:100]
    )  # as if the machine died while the file was written in place
    with pytest.warns(UserWarning, match="rebuilding"):
        again = build_features(routed, tok, rows, 4, batch_size=4, cache_dir=tmp_path)
    torch.testing.assert_close(again.pooled, first.pooled)
    assert FeatureSet.load(cached).pooled.shape == first.pooled.shape  # the file was rewritten whole


def test_a_zeroed_cache_is_refused_by_its_checksum_and_another_tokenizer_misses_it(
    routed, tmp_path, monkeypatch
):
    from safetensors import safe_open
    from safetensors.torch import save_file

    tok, rows = tiny_tokenizer(), synthetic_rows(6)
    build_features(routed, tok, rows, 4, batch_size=4, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.safetensors")
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["pooled"] = torch.zeros_like(tensors["pooled"])  # zeroed features, metadata kept
    save_file(tensors, str(path), metadata=metadata)
    calls = _count_calls(monkeypatch, routed)
    with pytest.warns(UserWarning, match="checksum"):
        again = build_features(routed, tok, rows, 4, batch_size=4, cache_dir=tmp_path)
    assert calls and again.pooled.abs().sum() > 0

    class Shifted:  # the same text, other token ids
        pad_token_id = tok.pad_token_id
        bos_token = None

        def __call__(self, text, add_special_tokens=True):
            return {
                "input_ids": [i + 1 for i in tok(text, add_special_tokens=add_special_tokens)["input_ids"]]
            }

    assert cache_key(routed, rows, 4, tokenizer=tok) != cache_key(routed, rows, 4, tokenizer=Shifted())
