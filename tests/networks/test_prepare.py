import pytest
import torch
from monai.networks.nets import UNet

from bundle.networks import prepare_network


def _net():
    torch.manual_seed(0)
    return UNet(2, 1, 1, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)


def test_bf16_autocast_keeps_float32_outputs_state_dict_and_gradients():
    ref = _net()
    net = prepare_network(_net(), "cpu", channels_last=True, autocast="bf16")
    assert list(net.state_dict()) == list(ref.state_dict())
    x = torch.rand(2, 1, 16, 16)
    out = net(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref(x), atol=0.1, rtol=0.1)  # bf16 is close, not equal
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_plain_is_unchanged():
    net = prepare_network(_net(), "cpu")
    x = torch.rand(1, 1, 16, 16)
    torch.testing.assert_close(net(x), _net()(x))


@pytest.mark.parametrize("kw", [{"autocast": "int8"}, {"autocast": "fp16"}])
def test_invalid(kw):
    with pytest.raises(ValueError):
        prepare_network(_net(), "cpu", **kw)
