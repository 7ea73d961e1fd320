"""The QA network: output shapes and contract, the HiResCAM layer, encoder loading and freezing."""

import pytest
import torch

from bundle.data.datalist import SCORE_KEYS
from bundle.networks import CAM_LAYER, QANet, SupConNet, load_encoder_weights, qa_logits

SMALL = {"layers": [1, 1, 1, 1], "block_inplanes": [8, 16, 32, 64], "head_channels": 8, "qa_channels": 4}


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("qa_input", ["logits", "hidden"])
def test_baseline_outputs_four_logits(size, qa_input):
    net = QANet(qa_input=qa_input, **SMALL).eval()
    out = net(torch.rand(3, 1, size, size))
    assert out.shape == (3, 4) and qa_logits(out) is out
    assert net.embed(torch.rand(2, 1, size, size)).shape == (2, 64)
    assert SCORE_KEYS == ("nulling", "sharpness", "enhancement", "fibrosis")


def test_resnet34_layout_and_cam_layer():
    net = QANet()  # the defaults: resnet34, stride-2 stem
    assert [len(getattr(net.encoder, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert net.encoder.conv1.stride == (2, 2) and net.encoder.conv1.in_channels == 1
    layer = dict(net.named_modules())[CAM_LAYER]
    assert CAM_LAYER == "encoder.layer4" and layer is net.encoder.layer4
    seen = {}

    def hook(module, inputs, output):
        seen["shape"] = tuple(output.shape)

    layer.register_forward_hook(hook)
    out = net.eval()(torch.rand(1, 1, 128, 128))
    assert out.shape == (1, 4) and seen["shape"] == (1, 512, 4, 4)


def test_multitask_outputs_dict_with_full_size_mask():
    net = QANet(segmentation=True, decoder_channels=[32, 16, 8, 8, 4], **SMALL).eval()
    out = net(torch.rand(2, 1, 64, 64))
    assert set(out) == {"qa", "seg"} and out["qa"].shape == (2, 4) and out["seg"].shape == (2, 1, 64, 64)
    assert qa_logits(out) is out["qa"]
    assert dict(net.named_modules())[CAM_LAYER] is net.encoder.layer4


def test_qa_logits_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        qa_logits(torch.zeros(2, 3))
    with pytest.raises(ValueError):
        qa_logits({"seg": torch.zeros(2, 1, 8, 8)})


def test_options_are_validated():
    with pytest.raises(ValueError, match="qa_input"):
        QANet(qa_input="other")
    with pytest.raises(ValueError, match="4 entries"):
        QANet(layers=[1, 1, 1])


def test_frozen_encoder_does_not_change():
    torch.manual_seed(0)
    net = QANet(**SMALL)
    net.freeze_encoder()
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}  # weights and batch-norm statistics
    heads_before = [p.clone() for p in net.attribute_heads.parameters()]
    opt = torch.optim.Adam(net.parameters(), lr=0.1)  # all parameters, as a config might pass them
    for _ in range(3):
        net.train()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(torch.rand(4, 1, 32, 32)), torch.ones(4, 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not net.encoder.training
    for k, v in net.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(a, b) for a, b in zip(heads_before, net.attribute_heads.parameters()))
    assert all(not p.requires_grad for p in net.encoder.parameters())
    assert {id(p) for p in net.trainable_parameters()}.isdisjoint({id(p) for p in net.encoder.parameters()})


def test_contrastive_checkpoint_gives_gradients_at_inference():
    """HiResCAM needs gradients of the last stage: a frozen-encoder model's state dict loads into a plain QANet."""
    frozen = QANet(freeze_encoder=True, **SMALL)
    net = QANet(**SMALL)
    net.load_state_dict(frozen.state_dict())
    acts = {}

    def hook(module, inputs, output):
        output.retain_grad()
        acts["a"] = output

    net.eval().encoder.layer4.register_forward_hook(hook)
    net(torch.rand(1, 1, 32, 32))[0, 3].backward()
    assert acts["a"].grad is not None and acts["a"].grad.abs().sum() > 0


def test_encoder_weights_load_from_local_checkpoints(tmp_path):
    src = QANet(**SMALL)
    torch.save(src.encoder.state_dict(), tmp_path / "enc.pt")
    torch.save(src.state_dict(), tmp_path / "full.pt")
    for name in ("enc.pt", "full.pt"):
        dst = QANet(pretrained_path=str(tmp_path / name), **SMALL)
        for k, v in src.encoder.state_dict().items():
            assert torch.equal(v, dst.encoder.state_dict()[k]), (name, k)
    torch.save(QANet(layers=[2, 1, 1, 1], block_inplanes=[8, 16, 32, 64]).encoder.state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: does not fit"):
        load_encoder_weights(QANet(**SMALL).encoder, str(tmp_path / "other.pt"))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        QANet(pretrained_path=str(tmp_path / "missing.pt"), **SMALL)


def test_supcon_net_projects_views_to_unit_vectors():
    net = QANet(**SMALL)
    sc = SupConNet(net.encoder, in_features=64, hidden=16, projection_dim=8)
    z = sc(torch.rand(3, 2, 1, 32, 32))
    assert z.shape == (3, 2, 8) and torch.allclose(z.norm(dim=-1), torch.ones(3, 2), atol=1e-5)
    assert sc.encoder is net.encoder  # pretraining trains the QA network's encoder in place
    with pytest.raises(ValueError, match="views"):
        sc(torch.rand(3, 1, 32, 32))


def test_la_statistics_against_a_direct_computation():
    import numpy as np
    from scipy import ndimage

    from bundle.networks.qa import LA_STAT_QUANTILES, la_statistics

    rng = np.random.default_rng(0)
    img = rng.uniform(0.2, 1.0, (2, 24, 24)).astype(np.float32)
    img[:, :, :2] = 0  # outside the scan
    mask = np.zeros((2, 24, 24), bool)
    mask[0, 8:16, 9:18] = True
    out = la_statistics(torch.from_numpy(img)[:, None], torch.from_numpy(mask.astype(np.float32))[:, None]).numpy()
    a, m = img[0].astype(np.float64), mask[0]

    def rank(values, p):  # the nearest-rank quantile that la_statistics takes
        v = np.sort(values)
        return v[int(round(p * (len(v) - 1)))]

    b = rank(a[m], 0.5)
    dil = ndimage.binary_dilation(m, np.ones((7, 7)))
    q = [rank(a[~dil & (a > 0)], p) / b for p in LA_STAT_QUANTILES]
    ero = ndimage.binary_erosion(m, np.ones((3, 3)))
    border = m & ~ero
    dx = np.abs(np.diff(a, axis=1, append=a[:, -1:]))
    dy = np.abs(np.diff(a, axis=0, append=a[-1:, :]))
    expected = [*q, rank(a[dil & ~m], 0.5) / b, np.log(b), a[ero].std() / b, (dx + dy)[border].mean() / b]
    assert out.shape == (2, len(LA_STAT_QUANTILES) + 4)
    np.testing.assert_allclose(out[0], expected, rtol=1e-4, atol=1e-5)
    assert np.all(out[1] == 0)  # no LA on the second slice


def test_stats_skip_and_attention_pooling_options():
    net = QANet(in_channels=2, intensity_stats=True, la_stats=True, stats_skip=True, pooling="attention", **SMALL)
    x = torch.rand(2, 3, 2, 32, 32)
    x[:, :, 1] = (x[:, :, 1] > 0.7).float()
    net.eval()
    assert net(x[0]).shape == (3, 4) and net.forward_bags(x).shape == (2, 4)
    assert net.stats_skip.out_features == 3  # the attributes; the QA module reads them
    with pytest.raises(ValueError, match="in_channels"):
        QANet(la_stats=True, **SMALL)
    with pytest.raises(ValueError, match="pooling"):
        QANet(pooling="max", **SMALL)
    with pytest.raises(ValueError, match="stats_skip"):
        QANet(stats_skip=True, **SMALL)
    plain = QANet(intensity_stats=True, **SMALL).eval()
    bags = torch.rand(2, 3, 1, 32, 32)
    torch.testing.assert_close(plain.forward_bags(bags), plain(bags.flatten(0, 1)).view(2, 3, 4).mean(1))
