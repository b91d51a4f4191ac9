"""What search and evaluation read from inside a routed model: recorded states, rows started at a layer,
final hidden states, LM-head logits and 4D attention masks, checked against the model's own forward."""

import pytest
import torch
from tiny_models import ARCHITECTURES, explicit_model, plain_layer_states, prompts, tiny_model

from drllm.router import RoutedModel, layer_list

ATOL = 1e-5


def _positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _explicit_layer_inputs(model, ids, mask):
    """Hidden states entering every layer of a plain model, then its last layer's output."""
    with plain_layer_states(model) as seen, torch.no_grad():
        final = model.base_model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask))
    return seen, final.last_hidden_state


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("path", [[1, 1, 1, 1], [1, 0, 2, 1], [2, 1, 0, 0]])
def test_recorded_states_equal_explicit_model(arch, path):
    model = tiny_model(arch)
    ids, mask = prompts(pad_rows=2)
    explicit_states, explicit_final = _explicit_layer_inputs(explicit_model(model, path), ids, mask)
    routed = RoutedModel(model)
    with torch.no_grad(), routed.recording() as states:
        final = routed.backbone(ids, mask, path)
    assert len(states) == routed.num_layers + 1
    real = mask.bool()
    for i in range(routed.num_layers + 1):
        j = sum(path[:i])  # explicit layers run before routed layer i
        torch.testing.assert_close(states[i][real], explicit_states[j][real], atol=ATOL, rtol=0)
    torch.testing.assert_close(final[real], explicit_final[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_rows_started_from_recorded_states_equal_the_full_run(arch):
    model = tiny_model(arch)
    ran = []
    for i, layer in enumerate(layer_list(model)):
        layer.register_forward_hook(lambda mod, args, out, i=i: ran.append((i, args[0].shape[0])))
    routed = RoutedModel(model)
    ids, mask = prompts(batch=4, pad_rows=2)
    paths = torch.tensor([[0, 2, 1, 1], [1, 1, 0, 2], [1, 2, 2, 0], [1, 1, 1, 0]])
    starts = [0, 2, 1, 3]  # every row executes each layer before its start, as the recorded path did
    with torch.no_grad():
        full = routed.backbone(ids, mask, paths)
        with routed.recording() as states:
            routed.backbone(ids, mask)
        given = torch.stack([states[s][r] for r, s in enumerate(starts)])
        asked = paths.clone()
        for r, s in enumerate(starts):
            asked[r, :s] = 2  # whatever the decisions say, a row skips the layers before its start
        ran.clear()
        with routed.starting_at(starts, given), routed.recording() as seen:
            started = routed.backbone(ids, mask, asked)
    real = mask.bool()
    torch.testing.assert_close(started[real], full[real], atol=ATOL, rtol=0)
    assert routed.last_decisions.tolist() == [[0, 2, 1, 1], [0, 0, 0, 2], [0, 2, 2, 0], [0, 0, 0, 0]]
    # layer 0 runs on no row; layers 1..3 on the rows that execute (then repeat) them after their start
    assert ran == [(1, 2), (1, 2), (2, 2), (2, 1), (3, 2), (3, 1)]
    for r, s in enumerate(starts[1:], start=1):
        torch.testing.assert_close(seen[s][r], given[r], atol=0, rtol=0)  # recording shows the state put in


def test_starting_at_refuses_bad_inputs():
    routed = RoutedModel(tiny_model("llama"))
    ids, mask = prompts(batch=2)
    hidden = torch.zeros(2, ids.shape[1], 32)
    with pytest.raises(ValueError, match=r"start layers must be in 0\.\.3, got \[1, 4\]"):
        with routed.starting_at([1, 4], hidden):
            pass
    with pytest.raises(ValueError, match="hidden must be"):
        with routed.starting_at([1, 2, 0], hidden):
            pass
    with pytest.raises(ValueError, match="for one forward without a cache"):
        with routed.starting_at([1, 0], hidden[:, :3]):
            routed.backbone(ids, mask, [1, 1, 1, 1])
    routed.add_routers(2, 8)
    with pytest.raises(ValueError, match="starting_at needs explicit decisions"):
        with routed.starting_at([1, 0], hidden):
            routed.backbone(ids, mask)
    assert torch.equal(routed.route(ids, mask), routed.route(ids, mask))  # the hooks are gone again


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
def test_lm_logits_of_backbone_equal_model_logits(arch):
    cap = 0.05
    model = tiny_model(arch, **({"final_logit_softcapping": cap} if arch == "gemma3_text" else {}))
    routed = RoutedModel(model)
    ids, mask = prompts()
    path = [1, 0, 2, 1]
    with torch.no_grad():
        hidden = routed.backbone(ids, mask, path)
        logits = routed.lm_logits(hidden)
        ref = routed(ids, attention_mask=mask, decisions=path, position_ids=_positions(mask)).logits
        raw = model.get_output_embeddings()(hidden)
    real = mask.bool()
    torch.testing.assert_close(logits[real], ref[real], atol=ATOL, rtol=0)
    if arch == "gemma3_text":
        assert float(raw.abs().max()) > 2 * cap and float(logits.abs().max()) < cap  # the cap was applied


@pytest.mark.parametrize("arch", ["mistral", "gemma3_text", "llama", "gpt2"])
def test_attention_mask_4d_equals_the_models_own_mask(arch):
    """Causal attention over real tokens, as a 4D mask, gives the logits of the model's own 2D mask."""
    routed = RoutedModel(tiny_model(arch))
    ids, mask = prompts(batch=3, length=16, pad_rows=2)  # longer than the sliding windows (5 and 6)
    positions, path = _positions(mask), [1, 2, 0, 1]
    t = ids.shape[1]
    eye = torch.eye(t, dtype=torch.bool)
    allowed = (torch.ones(t, t, dtype=torch.bool).tril() & mask.bool()[:, None, :]) | eye
    with torch.no_grad():
        ref = routed(ids, attention_mask=mask, decisions=path, position_ids=positions).logits
        four_d = routed.attention_mask_4d(allowed, positions)
        ours = routed.lm_logits(routed.backbone(ids, four_d, path, positions))
        full = torch.zeros(3, 1, t, t).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
        windowless = routed.lm_logits(routed.backbone(ids, full, path, positions))
    real = mask.bool()
    torch.testing.assert_close(ours[real], ref[real], atol=ATOL, rtol=0)
    sliding = arch in ("mistral", "gemma3_text")
    assert isinstance(four_d, dict) == (arch == "gemma3_text")
    assert (not torch.allclose(windowless[real], ref[real], atol=1e-4)) == sliding  # the window matters
