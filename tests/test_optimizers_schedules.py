import math

import pytest
import torch

from bundle.optimizers import scaled_lr, warmup_schedule


@pytest.mark.parametrize(
    "scaling, batch, expected",
    [("linear", 256, 2e-3), ("linear", 32, 2.5e-4), ("sqrt", 512, 2e-3), ("none", 512, 1e-3)],
)
def test_scaled_lr_single_process(scaling, batch, expected):
    assert scaled_lr(1e-3, batch, 128, scaling) == pytest.approx(expected)


def _lrs(**kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_schedule(opt, **kw)
    out = []
    for _ in range(kw["max_epochs"]):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_matches_torch_cosine_annealing():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    expected = []
    for _ in range(10):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert _lrs(max_epochs=10, schedule="cosine") == pytest.approx(expected)


def test_warmup_then_cosine():
    lrs = _lrs(max_epochs=6, schedule="cosine", warmup_epochs=2)
    assert lrs[:2] == pytest.approx([1 / 3, 2 / 3])
    assert lrs[2] == pytest.approx(1.0)
    assert lrs[3] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_cyclic_restarts_and_constant():
    lrs = _lrs(max_epochs=8, schedule="cyclic", cycle_epochs=4)
    assert lrs[0] == pytest.approx(1.0) and lrs[4] == pytest.approx(1.0) and lrs[2] == pytest.approx(0.5)
    assert _lrs(max_epochs=3, schedule="constant") == pytest.approx([1.0, 1.0, 1.0])


@pytest.mark.parametrize("kw", [{"schedule": "step"}, {"warmup_epochs": -1}, {"min_factor": 2.0}])
def test_invalid(kw):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError):
        warmup_schedule(opt, max_epochs=5, **kw)
    with pytest.raises(ValueError):
        scaled_lr(1e-3, 8, 128, "cubic")


def _reference(epoch, max_epochs, schedule, warmup_epochs, cycle_epochs, min_factor):
    """The schedule as documented (and as the bundle's own LambdaLR computed it before torch's schedulers)."""
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    t = epoch - warmup_epochs
    if schedule == "constant":
        return 1.0
    period = cycle_epochs if schedule == "cyclic" else max(1, max_epochs - warmup_epochs)
    phase = (t % period) / period if schedule == "cyclic" else min(t, period) / period
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * phase))


@pytest.mark.parametrize("schedule", ["cosine", "cyclic", "constant"])
@pytest.mark.parametrize("warmup_epochs", [0, 1, 3])
@pytest.mark.parametrize("min_factor", [0.0, 0.1])
def test_torch_schedulers_follow_the_documented_formula(schedule, warmup_epochs, min_factor):
    kw = {
        "max_epochs": 12,
        "schedule": schedule,
        "warmup_epochs": warmup_epochs,
        "cycle_epochs": 4,
        "min_factor": min_factor,
    }
    expected = [_reference(e, **kw) for e in range(12)]
    assert _lrs(**kw) == pytest.approx(expected, abs=1e-9)
