"""HiResCAM against a hand computation, and against GradCAM where theory says they agree and where they differ."""

import numpy as np
import pytest
import torch
from monai.visualize import GradCAM

from bundle.visualize import HiResCAM, scale_to_unit


class ConvDense(torch.nn.Module):
    """conv (the explained layer) -> flatten -> linear: the class score's gradient varies over space."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)
        self.fc = torch.nn.Linear(3 * 5 * 5, 2)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


class ConvGap(torch.nn.Module):
    """conv -> ReLU (the explained layer) -> global average pooling -> linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("truncate_graph", [True, False])
def test_matches_hand_computation(truncate_graph):
    net = ConvDense()
    x = torch.randn(2, 1, 5, 5, requires_grad=True)
    raw = HiResCAM(net, target_layers="conv", truncate_graph=truncate_graph).compute_map(x, class_idx=1)
    assert all(p.requires_grad for p in net.parameters())  # left as they were
    # by hand: the score is sum_{k,i,j} W[1, k, i, j] * A[k, i, j], so its gradient w.r.t. A is W[1] itself
    with torch.no_grad():
        acti = net.conv(x)
        grad = net.fc.weight[1].view(3, 5, 5)
        expected = torch.relu((grad * acti).sum(1, keepdim=True))
    assert raw.shape == (2, 1, 5, 5)
    torch.testing.assert_close(raw, expected)
    # GradCAM averages the gradient over space first: a different (unfaithful) map here
    gradcam = GradCAM(ConvDense(), target_layers="conv").compute_map(x, class_idx=1)
    with torch.no_grad():
        pooled = torch.relu((grad.mean((1, 2)).view(1, 3, 1, 1) * acti).sum(1, keepdim=True))
    torch.testing.assert_close(gradcam, pooled)
    assert not torch.allclose(raw, gradcam)


def test_equals_gradcam_right_before_global_average_pooling():
    # the gradient of a score w.r.t. a layer feeding global average pooling is constant over space (w_ck / HW),
    # so HiResCAM and GradCAM coincide there (Draelos & Carin, sec. 3); one layer earlier the ReLU breaks this
    x = torch.randn(3, 1, 6, 6, requires_grad=True)
    for c in range(3):
        hires = HiResCAM(ConvGap(), target_layers="act").compute_map(x, class_idx=c)
        grad = GradCAM(ConvGap(), target_layers="act").compute_map(x, class_idx=c)
        torch.testing.assert_close(hires, grad)
    hires = HiResCAM(ConvGap(), target_layers="conv").compute_map(x, class_idx=0)
    assert not torch.allclose(hires, GradCAM(ConvGap(), target_layers="conv").compute_map(x, class_idx=0))


def test_upsampled_and_scaled_to_unit():
    net = ConvDense()
    with torch.no_grad():  # the maps need gradients: HiResCAM enables them itself
        maps = HiResCAM(net, target_layers="conv")(torch.randn(2, 1, 5, 5), class_idx=0)
    assert maps.shape == (2, 1, 5, 5)
    assert float(maps.min()) >= 0 and np.allclose(maps.flatten(1).amax(1).numpy(), 1.0)
    scaled = scale_to_unit(torch.tensor([[[0.0, 2.0]], [[0.0, 0.0]]]))
    torch.testing.assert_close(scaled, torch.tensor([[[0.0, 1.0]], [[0.0, 0.0]]]))  # an all-zero map stays zero
