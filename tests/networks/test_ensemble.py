"""Ensemble and FlipTTA: hand-computed averages."""

import pytest
import torch

from bundle.networks import Ensemble, FlipTTA


class AddRamp(torch.nn.Module):
    """logits = x + a ramp along the last axis: not flip-equivariant, so flips change its output."""

    def forward(self, x):
        return x + torch.arange(x.shape[-1], dtype=x.dtype)


def test_flip_tta_averages_probabilities_of_the_flipped_back_outputs():
    x = torch.tensor([[[[0.0, 1.0, -2.0]]]])  # (1, 1, 1, 3)
    ramp, back = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([2.0, 1.0, 0.0])
    # the flipped view: flip(x) + ramp, flipped back = x + flip(ramp)
    expected = torch.logit((torch.sigmoid(x + ramp) + torch.sigmoid(x + back)) / 2, eps=1e-6)
    torch.testing.assert_close(FlipTTA(AddRamp(), flips=((), (3,)))(x), expected)
    torch.testing.assert_close(FlipTTA(AddRamp(), flips=((),))(x), x + ramp, atol=1e-5, rtol=1e-5)
    # a flip along the other in-plane axis of a one-row input changes nothing
    torch.testing.assert_close(FlipTTA(AddRamp(), flips=((), (2,)))(x), x + ramp, atol=1e-5, rtol=1e-5)


def test_flip_tta_refuses_non_spatial_flips():
    with pytest.raises(ValueError, match="spatial dimensions"):
        FlipTTA(AddRamp(), flips=((1,),))
    with pytest.raises(ValueError, match="spatial dimensions"):
        FlipTTA(AddRamp(), flips=())


def test_ensemble_of_flip_tta_members_combines_as_documented():
    x = torch.zeros(1, 1, 1, 2)
    ens = Ensemble.from_networks([FlipTTA(AddRamp(), ((),)), FlipTTA(AddRamp(), ((), (3,)))])
    p1 = torch.sigmoid(torch.tensor([0.0, 1.0]))
    p2 = (torch.sigmoid(torch.tensor([0.0, 1.0])) + torch.sigmoid(torch.tensor([1.0, 0.0]))) / 2
    torch.testing.assert_close(ens(x)[0, 0, 0], torch.logit((p1 + p2) / 2, eps=1e-6), atol=1e-5, rtol=1e-5)
