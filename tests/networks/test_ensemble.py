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


class Scale(torch.nn.Module):
    """logits = w * x, one weight: a member whose state dict and output are easy to tell apart."""

    def __init__(self, w: float = 1.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(float(w)))

    def forward(self, x):
        return self.w * x


def test_a_list_of_architectures_gets_members_copies_each_in_order():
    from bundle.networks import Rescaled

    ens = Ensemble([Scale(1.0), Rescaled(Scale(2.0), scale=0.5)], members=3)
    assert len(ens.members) == 6
    assert all(isinstance(m, Scale) for m in ens.members[:3]) and all(isinstance(m, Rescaled) for m in ens.members[3:])
    assert sorted(k for k in ens.state_dict() if k.startswith("members.4.")) == ["members.4.network.w"]
    ens.members[1].w.data.fill_(5.0)  # copies, not one shared module
    assert ens.members[0].w.item() == 1.0
    with pytest.raises(ValueError, match="non-empty"):
        Ensemble([], members=2)


def test_subset_picks_one_folds_members_of_every_architecture():
    # 2 architectures x 3 folds: members 0, 1, 2 (first) and 3, 4, 5 (second); fold 1 is members 1 and 4
    ens = Ensemble.from_networks([Scale(w) for w in (1, 2, 3, 10, 20, 30)])
    fold1 = ens.subset(1, 3)
    assert [m.w.item() for m in fold1.members] == [2.0, 20.0]
    assert fold1.members[0] is ens.members[1]  # the same weights, not copies
    x = torch.tensor([[[[0.1]]]])
    expected = torch.logit((torch.sigmoid(2 * x) + torch.sigmoid(20 * x)) / 2, eps=1e-6)
    torch.testing.assert_close(fold1(x), expected)
    for index, period in ((3, 3), (0, 4), (0, 0)):
        with pytest.raises(ValueError, match="do not split"):
            ens.subset(index, period)


def test_rescaled_runs_the_network_at_its_own_size_and_returns_the_inputs():
    from bundle.networks import Rescaled

    seen = []

    class Record(torch.nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return x[:, :1]

    x = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).reshape(2, 3, 10, 10)
    out = Rescaled(Record(), scale=0.8)(x)
    assert seen == [(2, 3, 8, 8)] and out.shape == (2, 1, 10, 10)
    # a constant image stays constant through both resamplings (bilinear interpolation of a constant)
    torch.testing.assert_close(
        Rescaled(Record(), 0.8)(torch.full((1, 1, 10, 10), 3.0)), torch.full((1, 1, 10, 10), 3.0)
    )
    assert Rescaled(Record(), 1.0)(x) is not None and seen[-1] == (2, 3, 10, 10)  # scale 1: the input as it is
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="scale must be > 0"):
            Rescaled(Record(), bad)
