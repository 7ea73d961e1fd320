"""Stage 2: the verdict rules on hand-made probabilities, and the bundle's real QA network (small, untrained)."""

import os

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from bundle.errors import ConfigError, WeightsError
from bundle.inference import QALogits, QAStage, qa_verdict
from bundle.networks import CAM_LAYER, QANet
from tests.error_helpers import raises_error

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the bundle's QANet, shrunk for speed (the same overrides of configs/qa_baseline.yaml as a YAML overlay)
SMALL_QA = {"encoder_layers": [1, 1, 1, 1], "encoder_widths": [4, 8, 16, 32], "head_channels": 8, "qa_channels": 4}


def small_qanet(seed: int = 0, segmentation: bool = False) -> QANet:
    """The bundle's QA network (resnet layout shrunk): (N, 1, h, w) -> logits (N, 4) or, multi-task, a dict."""
    torch.manual_seed(seed)
    return QANet(
        layers=SMALL_QA["encoder_layers"],
        block_inplanes=SMALL_QA["encoder_widths"],
        head_channels=SMALL_QA["head_channels"],
        qa_channels=SMALL_QA["qa_channels"],
        segmentation=segmentation,
        decoder_channels=(16, 8, 8, 4, 4),
    )


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
        # a tie (1 of 2) is non-diagnostic, though the mean (0.8 + 0.3) / 2 = 0.55 says diagnostic: refer
        ([[0.8, 0.3]] * 4, 0, 1, 0.0, True),
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
    stage = QAStage(small_qanet(), cam_layer=CAM_LAYER, cam_slices=2)
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
    stage = QAStage(small_qanet(1))
    half = torch.rand(3, 1, 16, 8)
    quarter = torch.cat([half, half.flip(3)], dim=3)
    x = torch.cat([quarter, quarter.flip(2)], dim=2)  # symmetric under both flips
    v = stage.assess(x).verdict
    assert v["uncertainty"] == pytest.approx(0.0, abs=1e-6)


def test_multitask_network_dict_output_and_contract_check(tmp_path):
    net = small_qanet(2, segmentation=True)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        out = net.eval()(x)
    assert set(out) == {"qa", "seg"}  # the multi-task network returns a dict; stage 2 reads its "qa" entry
    torch.save(net.state_dict(), tmp_path / "qa_multitask.pt")
    stage = QAStage(
        small_qanet(5, segmentation=True),
        checkpoint=str(tmp_path / "qa_multitask.pt"),
        cam_layer=CAM_LAYER,
        cam_slices=1,
        output_key="qa",
    )
    np.testing.assert_allclose(stage.predict(x)[0], torch.sigmoid(out["qa"]).numpy(), rtol=1e-5, atol=1e-6)
    assert stage.assess(x).cams.shape == (1, 32, 32)
    with pytest.raises(ValueError, match="logits"):
        QALogits(torch.nn.Conv2d(1, 1, 1))(torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="cam_layer"):
        QAStage(small_qanet(), cam_layer="nope")
    with pytest.raises(ValueError, match="tta_flips"):
        QAStage(small_qanet(), tta_flips=[[2]])


def test_checkpoint_loading(tmp_path):
    trained = small_qanet(3)
    torch.save(trained.state_dict(), tmp_path / "qa.pt")
    stage = QAStage(small_qanet(4), checkpoint=str(tmp_path / "qa.pt"))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(stage.predict(x)[0], torch.sigmoid(trained.eval()(x)).numpy(), rtol=1e-5)
    with raises_error(WeightsError, "ERROR weights: QA network checkpoint .*missing.pt not found"):
        QAStage(small_qanet(), checkpoint=str(tmp_path / "missing.pt"))
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "other.pt")
    with raises_error(WeightsError, "does not fit the configured network"):
        QAStage(small_qanet(), checkpoint=str(tmp_path / "other.pt"))


def test_inference_config_builds_the_qa_training_network(tmp_path):
    """configs/inference.yaml's stage 2 for a checkpoint without a plan (a configs/qa_*.yaml training) is
    qa_baseline.yaml's network_def (one definition), CAM on its layer4; the shipped checkpoint's comes from its plan."""
    parser = ConfigParser()
    parser.read_config([os.path.join(ROOT, "configs", f) for f in ("common.yaml", "inference.yaml")])
    parser["bundle_root"] = ROOT
    shipped = parser.get_parsed_content("qa_network_def")
    assert type(shipped).__name__ == "Ensemble" and type(shipped.members[0]) is QANet
    assert parser.get_parsed_content("qa_rule") == "mean_logit" and parser.get_parsed_content("qa_region")["size"] == 64
    assert parser.get_parsed_content("qa_cam_layer") in dict(shipped.named_modules())
    parser["qa_ckpt"] = str(tmp_path / "qa_baseline.pt")  # no plan beside it
    parser.ref_resolver.reset()
    net = parser.get_parsed_content("qa_network_def")
    train = ConfigParser()
    train.read_config([os.path.join(ROOT, "configs", f) for f in ("common.yaml", "qa_baseline.yaml")])
    ref = train.get_parsed_content("network_def")
    assert type(net) is QANet and not net.segmentation
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert parser.get_parsed_content("qa_cam_layer") == CAM_LAYER and CAM_LAYER in dict(net.named_modules())
    # the multi-task network: the same config files plus its overlay
    parser["qa_config"] = ["configs/common.yaml", "configs/qa_baseline.yaml", "configs/qa_multitask.yaml"]
    parser.ref_resolver.reset()
    assert parser.get_parsed_content("qa_network_def").segmentation
    parser["qa_config"] = ["configs/common.yaml", "configs/nope.yaml"]
    parser.ref_resolver.reset()
    with raises_error(ConfigError, "ERROR config: no config file .*nope.yaml"):
        parser.get_parsed_content("qa_network_def")


def test_a_qa_training_plan_is_all_inference_needs(tmp_path):
    """A QA checkpoint with the plan its training wrote: the inference config builds the trained network and takes its
    slice size and rule from the plan, without reading any QA config."""
    import json

    from bundle.networks import write_qa_plan

    train = ConfigParser()
    train.read_config([os.path.join(ROOT, "configs", f) for f in ("common.yaml", "qa_baseline.yaml")])
    train.update({**SMALL_QA, "spatial_size": 48, "pretrained_path": "/nowhere/encoder.pt"})
    config = tmp_path / "config.json"
    config.write_text(json.dumps(train.get(), default=str))
    ckpt = tmp_path / "qa_small.pt"
    assert write_qa_plan(str(ckpt), str(config)) is None and not (tmp_path / "qa_small.json").exists()  # no weights
    torch.save(small_qanet().state_dict(), ckpt)
    write_qa_plan(str(ckpt), str(config))
    parser = ConfigParser()
    parser.read_config([os.path.join(ROOT, "configs", f) for f in ("common.yaml", "inference.yaml")])
    parser.update({"bundle_root": ROOT, "qa_ckpt": str(ckpt), "qa_config": ["configs/nope.yaml"]})
    net = parser.get_parsed_content("qa_network_def")
    assert type(net) is QANet and net.encoder.layer1[0].conv1.out_channels == SMALL_QA["encoder_widths"][0]
    net.load_state_dict(torch.load(ckpt))  # strict: the plan's network is the trained one
    assert parser.get_parsed_content("qa_spatial_size") == 48 and parser.get_parsed_content("qa_rule") == "mode"
    assert parser.get_parsed_content("qa_region") is None


def test_scan_prior_gets_the_scan_features_at_inference():
    from bundle.networks.qa import scan_context

    torch.manual_seed(3)
    net = QANet(layers=SMALL_QA["encoder_layers"], block_inplanes=SMALL_QA["encoder_widths"], scan_prior=True).eval()
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(12, 7))
    net.scan_prior.fit(feats, (feats[:, :4] > 0).astype(int), outputs=(0, 1, 2, 3))
    stage = QAStage(net, temperature=[1.0, 2.0, 1.0, 1.0], cam_slices=1)
    x = torch.rand(5, 1, 32, 32) + 0.05
    ctx = scan_context(net, x)
    assert float(net.scan_prior(ctx[None]).abs().min()) > 0  # the fitted prior says something about this scan
    with torch.no_grad():
        direct = torch.sigmoid(net(x, ctx) / torch.tensor([1.0, 2.0, 1.0, 1.0])).numpy()
    np.testing.assert_allclose(stage.predict(x)[0], direct, rtol=1e-5, atol=1e-6)
    assert stage.assess(x).cams.shape == (1, 32, 32)  # the maps explain the slices with the same features
