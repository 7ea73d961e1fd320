"""The one checkpoint reader (bundle.networks.loading.read_state_dict / fit_state_dict), on real torch.save files."""

import pytest
import torch

from bundle.errors import WeightsError
from bundle.networks.loading import fit_state_dict, read_state_dict


def _net():
    return torch.nn.Sequential(torch.nn.Linear(2, 3))


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "ddp"])
def test_reader_unwraps_every_checkpoint_form(tmp_path, wrap):
    state = _net().state_dict()
    saved = {
        "plain": state,
        "model": {"model": state},
        "state_dict": {"state_dict": state, "epoch": 3},
        "ddp": {f"module.{k}": v for k, v in state.items()},
    }[wrap]
    torch.save(saved, tmp_path / "w.pt")
    read = read_state_dict(str(tmp_path / "w.pt"))
    assert sorted(read) == ["0.bias", "0.weight"] and torch.equal(read["0.weight"], state["0.weight"])


def test_reader_refuses_unreadable_files_in_one_line(tmp_path):
    (tmp_path / "text.pt").write_text("not weights")
    with pytest.raises(WeightsError, match=r"^QA checkpoint .*text.pt is unreadable: not a PyTorch checkpoint"):
        read_state_dict(str(tmp_path / "text.pt"), "QA checkpoint")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match=r"list.pt holds a list, not a state dict$"):
        read_state_dict(str(tmp_path / "list.pt"))


def test_fit_names_missing_keys_or_the_first_other_shape():
    net = _net()
    with pytest.raises(WeightsError, match=r"^x.pt: no \(1 missing keys \(e.g. \['0.bias'\]\), 0 unexpected"):
        fit_state_dict(net, {"0.weight": torch.zeros(3, 2)}, "x.pt: no")
    other = {"0.weight": torch.zeros(4, 2), "0.bias": torch.zeros(4)}
    with pytest.raises(
        WeightsError,
        match=r"2 tensors of other shapes, e.g. 0.bias: \(4,\) in the file, \(3,\) in the network\): retrain$",
    ):
        fit_state_dict(net, other, "x.pt: no", "retrain")
    state = {k: torch.ones_like(v) for k, v in net.state_dict().items()}
    fit_state_dict(net, state, "unused")
    assert torch.equal(net[0].bias, torch.ones(3))
