"""Attention pooling of a scan's slices: shapes, uniform weights at start, permutation invariance, padding."""

import pytest
import torch

from bundle.networks.pooling import AttentionPooling


def test_shapes_and_weights_sum_to_one():
    pool = AttentionPooling(6, hidden=4)
    pooled, w = pool(torch.randn(3, 5, 6))
    assert pooled.shape == (3, 6) and w.shape == (3, 5)
    assert torch.allclose(w.sum(1), torch.ones(3)) and bool((w > 0).all())


def test_equal_scores_give_the_mean():
    pool = AttentionPooling(4, hidden=3)
    torch.nn.init.zeros_(pool.score.weight)  # every instance scores the bias alone: weights 1/N
    x = torch.arange(24.0).view(2, 3, 4)
    pooled, w = pool(x)
    assert torch.allclose(w, torch.full((2, 3), 1 / 3))
    assert torch.allclose(pooled, torch.tensor([[4.0, 5.0, 6.0, 7.0], [16.0, 17.0, 18.0, 19.0]]))


@pytest.mark.parametrize("gated", [True, False])
def test_permutation_invariant(gated):
    torch.manual_seed(0)
    pool = AttentionPooling(8, hidden=5, gated=gated)
    x = torch.randn(2, 7, 8)
    perm = torch.randperm(7)
    a, wa = pool(x)
    b, wb = pool(x[:, perm])
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(wa[:, perm], wb, atol=1e-6)


def test_padding_is_ignored():
    torch.manual_seed(1)
    pool = AttentionPooling(4)
    x = torch.randn(1, 3, 4)
    padded = torch.cat([x, torch.full((1, 2, 4), 1e3)], dim=1)
    mask = torch.tensor([[True, True, True, False, False]])
    a, _ = pool(x)
    b, w = pool(padded, mask)
    assert torch.allclose(a, b, atol=1e-5) and float(w[0, 3:].sum()) == 0.0


def test_bad_inputs_are_refused():
    pool = AttentionPooling(4)
    with pytest.raises(ValueError, match="B, N, F"):
        pool(torch.randn(3, 4))
    with pytest.raises(ValueError, match="at least one instance"):
        pool(torch.randn(1, 2, 4), torch.tensor([[False, False]]))
    with pytest.raises(ValueError, match="positive"):
        AttentionPooling(0)
