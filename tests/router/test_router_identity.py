"""Run identity on the router side: a routed model saves what plain transformers (and PEFT) load back, and
router files, budgets and checkpoints that would silently change decisions are refused in one line."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_models import prompts, tiny_model
from torch import nn
from transformers import AutoModelForCausalLM

from drllm.router import RoutedModel, Routers, layer_list, load_model
from drllm.router.routers import CONFIG_NAME, WEIGHTS_NAME


def _file_keys(folder):
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


# ----------------------------------------------------------------- saved base models load in transformers
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("how", ["save_pretrained", "save_base_model"])
def test_a_model_saved_while_routed_loads_in_plain_transformers(tmp_path, arch, how):
    model = tiny_model(arch)
    ids, mask = prompts()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path / "plain")
    routed = RoutedModel(model)
    wrappers = list(layer_list(routed.model))
    if how == "save_pretrained":
        routed.model.save_pretrained(tmp_path / "routed")
    else:
        routed.save_base_model(tmp_path / "routed")
    assert _file_keys(tmp_path / "routed") == _file_keys(tmp_path / "plain")
    loaded, info = AutoModelForCausalLM.from_pretrained(
        tmp_path / "routed", output_loading_info=True, attn_implementation="eager"
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for key, value in loaded.state_dict().items():  # nothing newly initialised
        assert torch.equal(value, weights[key]), key
    with torch.no_grad():
        assert torch.equal(loaded.eval()(input_ids=ids, attention_mask=mask).logits, expected)
    assert all(a is b for a, b in zip(layer_list(routed.model), wrappers, strict=True))  # still routed
    with torch.no_grad():
        skipped = routed(ids, attention_mask=mask, decisions=[1, 0, 1, 1]).logits
    assert not torch.equal(skipped, expected)


def test_names_and_state_dict_of_a_routed_model_are_the_unwrapped_models():
    model = tiny_model("llama")
    keys = list(model.state_dict())
    names = [n for n, _ in model.named_parameters()]
    modules = [n for n, _ in model.named_modules()]
    routed = RoutedModel(model)
    assert list(routed.model.state_dict()) == keys
    assert [n for n, _ in routed.model.named_parameters()] == names
    assert [n for n, _ in routed.model.named_modules()] == modules
    # a plain state dict loads strictly into the routed model and takes effect
    other = tiny_model("llama", seed=3)
    routed.model.load_state_dict(other.state_dict())
    ids, mask = prompts()
    with torch.no_grad():
        expected = other(input_ids=ids, attention_mask=mask).logits
        assert torch.equal(routed(ids, attention_mask=mask).logits, expected)


# ----------------------------------------------------------------- PEFT models
class _Lora(nn.Module):
    """A LoRA-style linear: the base layer plus ``lora_B(lora_A(x))``."""

    def __init__(self, base: nn.Linear, rank: int = 2):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)

    def forward(self, x):
        return self.base_layer(x) + self.lora_B(self.lora_A(x))


class _Tuner(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)


class _PeftLike(nn.Module):
    """Stands in for peft's PeftModel: ``base_model.model`` is the causal LM with LoRA layers in place,
    attributes forward to it, and the adapter is saved as the entries of the LoRA modules, found by module
    name (as peft does) in ``state_dict()``."""

    def __init__(self, model, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        for layer in layer_list(model):
            layer.self_attn.q_proj = _Lora(layer.self_attn.q_proj)
        self.base_model = _Tuner(model)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.base_model, name)

    def get_base_model(self):
        return self.base_model.model

    def forward(self, *args, **kwargs):
        return self.get_base_model()(*args, **kwargs)

    def save_pretrained(self, directory):
        names = [n for n, m in self.named_modules() if isinstance(m, _Lora)]
        state = self.state_dict()
        adapter = {k: v for k, v in state.items() for n in names if k.startswith(f"{n}.lora_")}
        directory.mkdir(parents=True, exist_ok=True)
        save_file(adapter, str(directory / "adapter.safetensors"))

    def load_adapter(self, directory):
        with safe_open(str(directory / "adapter.safetensors"), framework="pt") as f:
            adapter = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        missing, unexpected = self.load_state_dict(adapter, strict=False)
        assert not unexpected and len(adapter) == 2 * len(layer_list(self.get_base_model()))


@pytest.mark.parametrize("how", ["adapter", "save_base_model"])
def test_a_peft_like_model_routes_and_its_adapter_saved_while_routed_loads_on_a_plain_model(tmp_path, how):
    peft_like = _PeftLike(tiny_model("llama"), seed=4)
    ids, mask = prompts()
    with torch.no_grad():
        expected = peft_like(input_ids=ids, attention_mask=mask).logits
    routed = RoutedModel(peft_like)
    with torch.no_grad():
        assert torch.equal(routed(ids, attention_mask=mask).logits, expected)
    if how == "adapter":
        peft_like.save_pretrained(tmp_path / "adapter")
    else:
        routed.save_base_model(tmp_path / "adapter")
    fresh = _PeftLike(tiny_model("llama"), seed=9)  # other LoRA weights until the adapter loads
    fresh.load_adapter(tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids, attention_mask=mask).logits, expected)
    assert routed.unwrap() is peft_like


def test_real_peft_lora_adapter_saved_while_routed_loads_on_a_plain_model(tmp_path):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    model = peft.get_peft_model(tiny_model("llama"), config)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_()
    ids, mask = prompts()
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    routed = RoutedModel(model)
    model.save_pretrained(tmp_path)
    plain = peft.PeftModel.from_pretrained(tiny_model("llama"), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(routed(ids, attention_mask=mask).logits, expected)
        assert torch.equal(plain(input_ids=ids, attention_mask=mask).logits, expected)


def test_something_that_is_not_a_model_is_refused_saying_what_to_pass():
    with pytest.raises(ValueError, match=r"\*ForCausalLM model or a PEFT model around one.*got str"):
        RoutedModel("llama")


# ----------------------------------------------------------------- budgets
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), "nan", "many"])
def test_a_non_finite_budget_is_refused_where_it_is_set(value):
    routed = RoutedModel(tiny_model("llama"))
    routed.add_routers(num_windows=2, bottleneck=8)
    routed.budget = 0.5
    with pytest.raises(ValueError, match=f"budget must be a finite number, got {value!r}"):
        routed.budget = value
    assert routed.budget == 0.5


# ----------------------------------------------------------------- router files
@pytest.fixture
def router_dir(tmp_path):
    routed = RoutedModel(tiny_model("llama"))
    routed.add_routers(num_windows=3, bottleneck=8)
    routed.save_pretrained(tmp_path)
    return tmp_path


def _edit_config(folder, **changes):
    config = json.loads((folder / CONFIG_NAME).read_text())
    config.update(changes)
    (folder / CONFIG_NAME).write_text(json.dumps(config))


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_router_weights_of_an_integer_dtype_are_refused(router_dir, dtype):
    path = router_dir / WEIGHTS_NAME
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    state["layers.1.net.2.weight"] = (state["layers.1.net.2.weight"] * 10).to(dtype)
    save_file(state, str(path), metadata=metadata)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(ValueError, match=f"tensor layers.1.net.2.weight has dtype {name}; router weights"):
        Routers.from_pretrained(router_dir)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format_version": 2}, "format_version is 2; this drllm reads router files of format_version 1"),
        ({"format_version": "1"}, "format_version is '1'"),
        ({"num_windows": 5}, "num_windows is 5 in the config, the weights were saved with num_windows 3"),
        ({"bottleneck": 16}, "bottleneck is 16 in the config, the weights have bottleneck 8"),
        ({"num_layers": 3}, "num_layers is 3 in the config, the weights have num_layers 4"),
        ({"hidden_size": 48}, "hidden_size is 48 in the config, the weights have hidden_size 32"),
        ({"fingerprint": "llama-L4-d32-v97"}, "fingerprint is 'llama-L4-d32-v97' in the config"),
        ({"num_windows": True}, "num_windows must be a positive integer, got True"),
        ({"weight_probe": "abc"}, "weight_probe must be a list"),
    ],
)
def test_router_configs_that_disagree_with_their_weights_are_refused(router_dir, changes, message):
    _edit_config(router_dir, **changes)
    with pytest.raises(ValueError, match=message) as err:
        Routers.from_pretrained(router_dir)
    assert CONFIG_NAME in str(err.value)


def test_a_router_config_missing_a_key_that_the_weights_recorded_is_refused(router_dir):
    config = json.loads((router_dir / CONFIG_NAME).read_text())
    del config["num_windows"]
    (router_dir / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"num_windows is 8 \(not set: the default\) in the config, the weights"
    ):
        Routers.from_pretrained(router_dir)


def test_router_files_saved_before_the_header_carried_the_config_still_load(router_dir):
    path = router_dir / WEIGHTS_NAME
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["router_config"])["num_windows"] == 3
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(state, str(path), metadata={"format": "pt"})
    routers = Routers.from_pretrained(router_dir)
    assert routers.config.num_windows == 3
    assert torch.equal(routers.layers[2].net[0].weight, state["layers.2.net.0.weight"])


# ----------------------------------------------------------------- pickles
class _Payload:
    """Unpickling this creates a file: proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_checkpoints_are_refused_in_one_line_naming_the_file_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    routers = tmp_path / "routers"
    routers.mkdir()
    (routers / CONFIG_NAME).write_text(json.dumps({"num_layers": 2, "hidden_size": 4}))
    torch.save({"layers.0.net.0.weight": _Payload(marker)}, routers / WEIGHTS_NAME)
    model = tmp_path / "model"
    tiny_model("llama").config.save_pretrained(model)
    torch.save({"model.embed_tokens.weight": _Payload(marker)}, model / "pytorch_model.bin")
    with pytest.raises(ValueError, match="routers.safetensors is not a valid safetensors file") as err:
        Routers.from_pretrained(routers)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"refused to unpickle pytorch_model.bin \(not plain") as err:
        load_model(str(model))
    assert "\n" not in str(err.value) and str(model) in str(err.value)
    assert not marker.exists()
