"""Tests of the class-balanced focal loss and the routing metrics."""

import math

import pytest
import torch
import torch.nn.functional as F

from drllm.train import class_weights, focal_loss  # the public names (issue 4)
from drllm.train.metrics import confusion_matrix, metrics_from_confusion, routing_metrics

# ---------------------------------------------------------------- class weights


def test_weights_sum_to_three_and_favour_rare_classes():
    weights = class_weights([1000, 50000, 20], beta=0.999)
    assert weights.shape == (3,) and weights.dtype == torch.float32
    assert weights.sum().item() == pytest.approx(3.0)
    assert weights[2] > weights[0] > weights[1] > 0


def test_weights_match_formula():
    counts, beta = torch.tensor([10.0, 200.0, 3.0]), 0.99
    raw = (1 - beta) / (1 - beta**counts)
    expected = raw * 3 / raw.sum()
    torch.testing.assert_close(class_weights(counts, beta), expected.float())


def test_weights_beta_zero_are_equal():
    torch.testing.assert_close(class_weights([5, 500, 1], beta=0.0), torch.ones(3))


def test_zero_count_class_gets_zero_weight():
    weights = class_weights([1, 2, 0], beta=0.5)
    # raw weights 1, 2/3, 0 -> normalised to sum 3
    torch.testing.assert_close(weights, torch.tensor([1.8, 1.2, 0.0]))
    assert torch.isfinite(weights).all()


@pytest.mark.parametrize(
    ("counts", "beta", "match"),
    [
        ([0, 0, 0], 0.9, "all zero"),
        ([1, -1, 2], 0.9, "non-negative"),
        ([[1, 2, 3]], 0.9, "shape"),
        ([1, 2, 3], 1.0, "beta"),
    ],
)
def test_weights_reject_bad_input(counts, beta, match):
    with pytest.raises(ValueError, match=match):
        class_weights(counts, beta)


# ---------------------------------------------------------------- focal loss


def test_gamma_zero_equal_weights_is_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 3, generator=gen)
    targets = torch.randint(0, 3, (32,), generator=gen)
    loss = focal_loss(logits, targets, class_counts=[7, 7, 7], gamma=0.0)
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets))


def test_gamma_zero_is_weighted_cross_entropy():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 3, generator=gen)
    targets = torch.randint(0, 3, (16,), generator=gen)
    counts = torch.tensor([30, 500, 4])
    weights = class_weights(counts)
    expected = (F.cross_entropy(logits, targets, reduction="none") * weights[targets]).mean()
    torch.testing.assert_close(focal_loss(logits, targets, counts, gamma=0.0), expected)


def test_hand_computed_example():
    logits = torch.tensor([[math.log(2.0), 0.0, 0.0], [0.0, 0.0, 0.0]])
    targets = torch.tensor([0, 1])
    # weights [1.8, 1.2, 0]; p = 1/2 for row 0, 1/3 for row 1
    row0 = 1.8 * (1 - 0.5) ** 2 * math.log(2.0)
    row1 = 1.2 * (1 - 1 / 3) ** 2 * math.log(3.0)
    loss = focal_loss(logits, targets, [1, 2, 0], gamma=2.0, beta=0.5)
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_focal_term_downweights_easy_examples():
    targets = torch.tensor([1])
    easy, hard = torch.tensor([[0.0, 5.0, 0.0]]), torch.tensor([[0.0, 0.5, 0.0]])
    ratio_focal = focal_loss(easy, targets, [1, 1, 1]) / focal_loss(hard, targets, [1, 1, 1])
    ratio_ce = F.cross_entropy(easy, targets) / F.cross_entropy(hard, targets)
    assert ratio_focal < ratio_ce


def test_gradient_flows_and_is_finite():
    logits = torch.tensor([[50.0, -50.0, 0.0], [0.1, 0.2, 0.3], [-3.0, 2.0, 9.0]], requires_grad=True)
    loss = focal_loss(logits, torch.tensor([0, 1, 2]), [10, 100, 1])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_accepts_leading_dims_and_sequence_counts():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 6, 3, generator=gen)
    targets = torch.randint(0, 3, (4, 6), generator=gen)
    flat = focal_loss(logits.reshape(-1, 3), targets.reshape(-1), torch.tensor([3, 9, 1]))
    torch.testing.assert_close(focal_loss(logits, targets, (3, 9, 1)), flat)


def test_focal_loss_rejects_bad_shapes():
    logits = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="targets has shape"):
        focal_loss(logits, torch.zeros(5, dtype=torch.long), [1, 1, 1])
    with pytest.raises(TypeError, match="torch.long"):
        focal_loss(logits, torch.zeros(4), [1, 1, 1])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        focal_loss(logits, torch.tensor([0, 1, 2, 3]), [1, 1, 1])
    with pytest.raises(ValueError, match="4 entries"):
        focal_loss(logits, torch.zeros(4, dtype=torch.long), [1, 1, 1, 1])
    with pytest.raises(ValueError, match="expected \\[N, C\\]"):
        focal_loss(torch.zeros(3), torch.tensor(0), [1, 1, 1])


# ---------------------------------------------------------------- metrics

TARGET = torch.tensor([[1, 1, 0, 2], [1, 0, 1, 1]])
PRED = torch.tensor([[1, 0, 0, 1], [1, 1, 1, 2]])


def test_confusion_matrix_by_hand():
    expected = torch.tensor([[1, 1, 0], [1, 3, 1], [0, 1, 0]])
    assert torch.equal(confusion_matrix(PRED, TARGET), expected)
    assert torch.equal(confusion_matrix(PRED.flatten(), TARGET.flatten()), expected)


def test_metrics_by_hand():
    metrics = routing_metrics(PRED, TARGET)
    expected = {
        "f1_skip": 0.5,  # 2 * 1 / (2 + 2)
        "f1_execute": 0.6,  # 2 * 3 / (5 + 5)
        "f1_repeat": 0.0,
        "macro_f1": 1.1 / 3,
        "acc_skip": 0.5,
        "acc_execute": 0.6,
        "acc_repeat": 0.0,
        "accuracy": 0.5,
        "layers_pred": 3.5,  # rows sum to 2 and 5
        "layers_target": 3.5,  # rows sum to 4 and 3
    }
    assert metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key


def test_layers_only_for_two_dimensional_input():
    metrics = routing_metrics(PRED.flatten(), TARGET.flatten())
    assert "layers_pred" not in metrics and "layers_target" not in metrics
    metrics = routing_metrics(torch.tensor([[0, 1, 2]]), torch.tensor([[1, 1, 1]]))
    assert metrics["layers_pred"] == 3.0 and metrics["layers_target"] == 3.0
    metrics = routing_metrics(torch.tensor([[0, 0, 1], [2, 2, 2]]), torch.tensor([[1, 1, 1], [1, 1, 1]]))
    assert metrics["layers_pred"] == 3.5 and metrics["layers_target"] == 3.0


def test_absent_classes_score_zero_and_leave_macro():
    ones = torch.ones(3, 5, dtype=torch.long)
    metrics = routing_metrics(ones, ones)
    assert metrics["macro_f1"] == 1.0 and metrics["accuracy"] == 1.0
    assert metrics["f1_skip"] == metrics["acc_skip"] == metrics["f1_repeat"] == metrics["acc_repeat"] == 0.0
    assert all(not math.isnan(value) for value in metrics.values())


def test_predicted_but_absent_target_class_counts_in_macro():
    metrics = routing_metrics(torch.tensor([1, 0]), torch.tensor([1, 1]))
    # execute: tp 1, support 2, predicted 1 -> F1 2/3; skip: predicted once, never a target -> F1 0
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert metrics["acc_skip"] == 0.0


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="shape"):
        routing_metrics(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        routing_metrics(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="outside"):
        routing_metrics(torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="empty"):
        routing_metrics(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))


def test_metrics_match_sklearn():
    sk_metrics = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(3)
    pred, target = torch.randint(0, 3, (2, 40, 12), generator=gen)
    ours = routing_metrics(pred, target)
    y_pred, y_true = pred.flatten().numpy(), target.flatten().numpy()
    assert ours["macro_f1"] == pytest.approx(sk_metrics.f1_score(y_true, y_pred, average="macro"))
    per_class = sk_metrics.f1_score(y_true, y_pred, average=None, labels=[0, 1, 2])
    assert [ours["f1_skip"], ours["f1_execute"], ours["f1_repeat"]] == pytest.approx(list(per_class))
    assert ours["accuracy"] == pytest.approx(sk_metrics.accuracy_score(y_true, y_pred))


def test_metrics_from_confusion_match_routing_metrics():
    cm = confusion_matrix(PRED, TARGET)
    layers = {"layers_pred": 3.5, "layers_target": 3.5}
    assert metrics_from_confusion(cm, **layers) == routing_metrics(PRED, TARGET)
    assert metrics_from_confusion(cm) == routing_metrics(PRED.flatten(), TARGET.flatten())


def test_metrics_from_confusion_equal_a_torchmetrics_matrix_summed_over_shards():
    from torchmetrics.classification import MulticlassConfusionMatrix

    gen = torch.Generator().manual_seed(4)
    pred, target = torch.randint(0, 3, (2, 10, 6), generator=gen)
    summed = MulticlassConfusionMatrix(num_classes=3)
    for rows in (slice(0, 3), slice(3, 10)):  # two uneven shards, as two processes would see them
        summed.update(pred[rows], target[rows])
    assert torch.equal(summed.compute(), confusion_matrix(pred, target))
    ours = routing_metrics(pred, target)
    layers = {k: ours[k] for k in ("layers_pred", "layers_target")}
    assert metrics_from_confusion(summed.compute(), **layers) == ours


def test_metrics_from_confusion_reject_bad_input():
    with pytest.raises(ValueError, match=r"cm has shape \(2, 2\)"):
        metrics_from_confusion(torch.ones(2, 2))
    with pytest.raises(ValueError, match="empty"):
        metrics_from_confusion(torch.zeros(3, 3))
