"""The weight probe sees every layer, the head and the final norm; older three-value probes still load."""

import pytest
import torch
from tiny_models import tiny_model

from drllm.router import RoutedModel, layer_list


def _changed(where):
    model = tiny_model("llama")
    with torch.no_grad():
        if where == "middle":
            for p in layer_list(model)[1].parameters():
                p.add_(0.05 * torch.randn_like(p))
        elif where == "head":
            model.lm_head.weight.copy_(torch.randn_like(model.lm_head.weight))
        else:
            model.model.norm.weight.mul_(-3)
    return model


@pytest.mark.parametrize("where", ["middle", "head", "norm"])
def test_routers_for_a_model_changed_anywhere_are_refused(where):
    routed = RoutedModel(tiny_model("llama"))
    routed.add_routers(kind="linear")
    other = RoutedModel(_changed(where))
    assert other.fingerprint == routed.fingerprint  # same architecture: only the probe tells them apart
    with pytest.raises(ValueError, match="trained on other weights"):
        other.check_compatible(routed.routers.config)


def test_a_three_value_probe_of_an_older_file_is_compared_where_it_reaches():
    routed = RoutedModel(tiny_model("llama"))
    routed.add_routers(kind="linear")
    config = routed.routers.config
    config.weight_probe = list(config.weight_probe[:3])
    RoutedModel(_changed("head")).check_compatible(config)  # the older probe does not reach the head
    with pytest.raises(ValueError, match="trained on other weights"):
        RoutedModel(tiny_model("llama", seed=1)).check_compatible(config)
