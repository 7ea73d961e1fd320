"""QA, multi-task and supervised contrastive losses against hand-computed values and a direct implementation."""

import math

import numpy as np
import pytest
import torch

from bundle.losses import (
    MultiLabelSupConLoss,
    MultiTaskLoss,
    QALoss,
    SupConLoss,
    balanced_pos_weight,
    resolve_pos_weight,
)

LOG2 = math.log(2.0)


@pytest.mark.parametrize(
    "pos_weight, expected",
    [
        (None, LOG2),  # p = 0.5 everywhere: BCE = log 2 per label
        ([2, 2, 1, 1], 5 / 4 * LOG2),  # targets [1, 0, 1, 0]: label 0 weighted twice, label 1 is negative
        ([3, 1, 3, 1], 2 * LOG2),  # labels 0 and 2 positive, weighted 3: (3 + 1 + 3 + 1) / 4
    ],
)
def test_qa_loss_hand_computed(pos_weight, expected):
    loss = QALoss(pos_weight=pos_weight)(torch.zeros(1, 4), torch.tensor([[1.0, 0.0, 1.0, 0.0]]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_qa_loss_matches_torch_and_accepts_dicts():
    torch.manual_seed(0)
    logits, target = torch.randn(5, 4), (torch.rand(5, 4) > 0.5).float()
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert QALoss()(logits, target).item() == pytest.approx(ref.item(), rel=1e-6)
    assert QALoss()({"qa": logits, "seg": None}, {"qa": target}).item() == pytest.approx(ref.item(), rel=1e-6)
    assert QALoss(pos_weight=[1, 2, 3, 4]).pos_weight_values == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="pos_weight"):
        QALoss(pos_weight=[1, 2])


def test_multitask_loss_is_qa_plus_dice():
    qa = torch.zeros(1, 4)
    seg = torch.tensor([[[[20.0, 20.0], [-20.0, -20.0]]]])  # predicts pixels 0, 1
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])  # truth: pixel 0 -> Dice 2*1/(2+1) = 2/3
    out, target = {"qa": qa, "seg": seg}, {"qa": torch.ones(1, 4), "seg": mask}
    assert MultiTaskLoss()(out, target).item() == pytest.approx(LOG2 + 1 / 3, abs=1e-4)
    assert MultiTaskLoss(seg_weight=2.0)(out, target).item() == pytest.approx(LOG2 + 2 / 3, abs=1e-4)
    with pytest.raises(ValueError, match="dict"):
        MultiTaskLoss()(qa, torch.ones(1, 4))


def test_balanced_pos_weight():
    t = np.array([[1, 1, 0, 1], [1, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 1]])
    assert balanced_pos_weight(t) == pytest.approx([1 / 3, 3.0, 10.0, 1 / 3])  # no positive: the cap
    assert resolve_pos_weight(None) is None and resolve_pos_weight([1, 2, 3, 4]) == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="balanced"):
        resolve_pos_weight("other")


def supcon_direct(features: torch.Tensor, labels: torch.Tensor, tau: float) -> float:
    """Eq. 4 written out anchor by anchor (mean over anchors, as Khosla et al.'s implementation)."""
    n, v = features.shape[:2]
    z = [features[i, k] for k in range(v) for i in range(n)]
    lab = [int(labels[i]) for k in range(v) for i in range(n)]
    total, anchors = 0.0, 0
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and lab[p] == lab[i]]
        if not positives:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / tau) for a in range(len(z)) if a != i)
        total += -sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denom) for p in positives) / len(positives)
        anchors += 1
    return total / anchors


def test_supcon_hand_computed():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    feats = torch.stack([torch.stack([e1, e1]), torch.stack([e2, e2])])  # 2 samples x 2 identical views
    # different labels: each anchor has 1 positive (dot 1) and 2 negatives (dot 0): log(e + 2) - 1
    assert SupConLoss(temperature=1.0)(feats, torch.tensor([0, 1])).item() == pytest.approx(
        math.log(math.e + 2) - 1, rel=1e-6
    )
    # one label: 3 positives with dots 1, 0, 0: log(e + 2) - 1/3
    assert SupConLoss(temperature=1.0)(feats, torch.tensor([1, 1])).item() == pytest.approx(
        math.log(math.e + 2) - 1 / 3, rel=1e-6
    )


@pytest.mark.parametrize("n, v, d, tau", [(4, 2, 3, 0.1), (5, 2, 4, 0.5), (3, 3, 2, 1.0), (6, 2, 8, 0.07)])
def test_supcon_matches_direct_formula(n, v, d, tau):
    g = torch.Generator().manual_seed(n * 10 + v)
    feats = torch.nn.functional.normalize(torch.randn(n, v, d, generator=g), dim=-1).double()
    labels = torch.randint(0, 2, (n,), generator=g)
    got = SupConLoss(temperature=tau)(feats, labels).item()
    assert got == pytest.approx(supcon_direct(feats, labels, tau), rel=1e-9)


def test_supcon_base_temperature_scales_and_singletons_are_skipped():
    g = torch.Generator().manual_seed(1)
    feats = torch.nn.functional.normalize(torch.randn(4, 2, 3, generator=g), dim=-1)
    labels = torch.tensor([0, 1, 1, 0])
    plain = SupConLoss(temperature=0.1)(feats, labels).item()
    assert SupConLoss(temperature=0.1, base_temperature=0.07)(feats, labels).item() == pytest.approx(
        plain * 0.1 / 0.07, rel=1e-6
    )
    one_view = feats[:, :1]  # one view each: sample 0 and 3 share label 0, samples 1 and 2 label 1
    assert SupConLoss(temperature=0.1)(one_view, labels).item() == pytest.approx(
        supcon_direct(one_view, labels, 0.1), rel=1e-5
    )
    lonely = SupConLoss(temperature=0.1)(feats[:2, :1], torch.tensor([0, 1]))  # no anchor has a positive
    assert lonely.item() == 0.0


def test_multilabel_supcon_is_the_sum_over_labels():
    g = torch.Generator().manual_seed(2)
    feats = torch.nn.functional.normalize(torch.randn(6, 2, 4, generator=g), dim=-1)
    labels = torch.randint(0, 2, (6, 4), generator=g)
    per = [SupConLoss(0.2)(feats, labels[:, k]).item() for k in range(4)]
    assert MultiLabelSupConLoss(0.2)(feats, labels).item() == pytest.approx(sum(per), rel=1e-6)
    assert MultiLabelSupConLoss(0.2, label_weights=[1, 0, 0, 2])(feats, labels).item() == pytest.approx(
        per[0] + 2 * per[3], rel=1e-6
    )
