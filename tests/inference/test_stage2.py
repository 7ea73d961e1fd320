"""Stage 2: the verdict rules on hand-made probabilities, and a real small (untrained) ResNet with the QA contract."""

import numpy as np
import pytest
import torch

from monai.networks.nets import ResNet

from bundle.inference import QALogits, QAStage, qa_verdict


def small_resnet(seed: int = 0) -> ResNet:
    """A MONAI ResNet with the QA contract: (N, 1, h, w) -> logits (N, 4), stride-2 stem, a ``layer4``."""
    torch.manual_seed(seed)
    return ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=[4, 8, 16, 32], spatial_dims=2,
                  n_input_channels=1, num_classes=4, conv1_t_stride=2)  # fmt: skip


def probs_of(fibrosis, attributes=0.5):
    """(T, S, 4) from fibrosis probabilities (T, S)."""
    f = np.asarray(fibrosis, float)
    return np.concatenate([np.full((*f.shape, 3), attributes), f[..., None]], axis=-1)


@pytest.mark.parametrize(
    "fibrosis, diagnostic, diagnostic_mean, uncertainty, refer",
    [
        # 3 slices, no augmentation spread: 2 of 3 vote diagnostic, mean (0.9+0.6+0.1)/3 = 0.533
        ([[0.9, 0.6, 0.1]] * 4, 1, 1, 0.0, False),
        # the mode says diagnostic (2 of 3), the mean (0.55+0.55+0.0)/3 = 0.367 says not: refer
        ([[0.55, 0.55, 0.0]] * 4, 1, 0, 0.0, True),
        # a tie (1 of 2) goes to the mean probability: (0.8 + 0.3) / 2 = 0.55 -> diagnostic
        ([[0.8, 0.3]] * 4, 1, 1, 0.0, False),
        # flips move the scan probability: per view 0.7, 0.7, 0.3, 0.3 -> std 0.2, views disagree: refer
        ([[0.7, 0.7], [0.7, 0.7], [0.3, 0.3], [0.3, 0.3]], 1, 1, 0.2, True),
        # a small spread (views 0.2, 0.24, 0.2, 0.24: std 0.02) below 0.05: no refer
        ([[0.2], [0.24], [0.2], [0.24]], 0, 0, 0.02, False),
    ],
)
def test_verdict_rules(fibrosis, diagnostic, diagnostic_mean, uncertainty, refer):
    v = qa_verdict(probs_of(fibrosis), threshold=0.5, refer_uncertainty=0.05)
    assert v["diagnostic"] == diagnostic and v["diagnostic_mean"] == diagnostic_mean
    assert v["uncertainty"] == pytest.approx(uncertainty, abs=1e-9)
    assert v["refer"] is refer and bool(v["refer_reasons"]) is refer
    np.testing.assert_allclose(v["p"][3], np.mean(fibrosis))
    np.testing.assert_allclose(v["p"][:3], 0.5)


def test_verdict_validates_shape():
    with pytest.raises(ValueError):
        qa_verdict(np.zeros((2, 0, 4)))
    with pytest.raises(ValueError):
        qa_verdict(np.zeros((2, 3, 3)))


def test_stage_on_a_real_network():
    stage = QAStage(small_resnet(), cam_layer="layer4", cam_slices=2)
    x = torch.rand(5, 1, 32, 32)
    probs = stage.predict(x)
    assert probs.shape == (4, 5, 4) and probs.min() >= 0 and probs.max() <= 1
    # the first view is the identity: the network's own sigmoid outputs
    with torch.no_grad():
        direct = torch.sigmoid(stage.model.net(x)).numpy()
    np.testing.assert_allclose(probs[0], direct, rtol=1e-5, atol=1e-6)
    # the second flips the rows
    with torch.no_grad():
        flipped = torch.sigmoid(stage.model.net(x.flip(2))).numpy()
    np.testing.assert_allclose(probs[1], flipped, rtol=1e-5, atol=1e-6)
    result = stage.assess(x)
    assert len(result.cam_slices) == 2 and result.cams.shape == (2, 32, 32)
    assert 0 <= result.cams.min() and result.cams.max() <= 1
    votes = result.verdict["slice_votes"]
    assert all(votes[i] == result.verdict["diagnostic"] for i in result.cam_slices)


def test_symmetric_slices_have_no_spread():
    stage = QAStage(small_resnet(1))
    half = torch.rand(3, 1, 16, 8)
    quarter = torch.cat([half, half.flip(3)], dim=3)
    x = torch.cat([quarter, quarter.flip(2)], dim=2)  # symmetric under both flips
    v = stage.assess(x).verdict
    assert v["uncertainty"] == pytest.approx(0.0, abs=1e-6)


def test_dict_output_and_contract_check():
    class MultiTask(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = small_resnet()

        def forward(self, x):
            return {"qa": self.encoder(x), "seg": torch.zeros_like(x)}

    stage = QAStage(MultiTask(), cam_layer="encoder.layer4", cam_slices=1)
    assert stage.predict(torch.rand(2, 1, 32, 32)).shape == (4, 2, 4)
    assert stage.assess(torch.rand(2, 1, 32, 32)).cams.shape == (1, 32, 32)
    with pytest.raises(ValueError, match="logits"):
        QALogits(torch.nn.Conv2d(1, 1, 1))(torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="cam_layer"):
        QAStage(small_resnet(), cam_layer="nope")
    with pytest.raises(ValueError, match="tta_flips"):
        QAStage(small_resnet(), tta_flips=[[2]])


def test_checkpoint_loading(tmp_path):
    trained = small_resnet(3)
    torch.save(trained.state_dict(), tmp_path / "qa.pt")
    stage = QAStage(small_resnet(4), checkpoint=str(tmp_path / "qa.pt"))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(stage.predict(x)[0], torch.sigmoid(trained.eval()(x)).numpy(), rtol=1e-5)
    with pytest.raises(SystemExit, match="ERROR weights: QA network checkpoint .*missing.pt not found"):
        QAStage(small_resnet(), checkpoint=str(tmp_path / "missing.pt"))
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="does not fit the configured network"):
        QAStage(small_resnet(), checkpoint=str(tmp_path / "other.pt"))
