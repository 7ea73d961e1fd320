"""LARS against a hand-computed step."""

import pytest
import torch

from bundle.optimizers import LARS


def test_lars_step_hand_computed():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))  # 1-D: plain momentum SGD
    opt = LARS([w, b], lr=0.5, momentum=0.9, weight_decay=0.0, trust_coefficient=0.01)
    w.grad, b.grad = torch.tensor([[0.0, 2.0]]), torch.tensor([0.5])  # ||g|| = 2
    opt.step()
    ratio = 0.01 * 5 / 2
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 4.0 - 0.5 * ratio * 2.0]]))
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.5 * 0.5]))
    w.grad, b.grad = torch.tensor([[0.0, 2.0]]), torch.tensor([0.5])
    w_norm = torch.linalg.vector_norm(w.detach()).item()
    opt.step()  # momentum: v = 0.9 v + lr * ratio * g
    v1 = 0.5 * ratio * 2.0
    v2 = 0.9 * v1 + 0.5 * (0.01 * w_norm / 2) * 2.0
    assert w.detach()[0, 1].item() == pytest.approx(4.0 - v1 - v2, rel=1e-6)


def test_lars_weight_decay_enters_the_trust_ratio():
    w = torch.nn.Parameter(torch.tensor([[1.0, 0.0]]))
    opt = LARS([w], lr=1.0, momentum=0.0, weight_decay=0.5, trust_coefficient=1.0)
    w.grad = torch.tensor([[0.0, 1.0]])
    opt.step()
    g = torch.tensor([[0.5, 1.0]])  # grad + wd * w
    expected = torch.tensor([[1.0, 0.0]]) - g * (1.0 / g.norm())
    assert torch.allclose(w.detach(), expected)


def test_lars_options_validated():
    with pytest.raises(ValueError, match="lr"):
        LARS([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    with pytest.raises(ValueError, match="momentum"):
        LARS([torch.nn.Parameter(torch.zeros(1))], momentum=1.0)
