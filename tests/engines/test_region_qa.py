"""The LA-region QA recipe's parts: exact augmentation, the ordinal loss by hand, a short training that learns a
known cue, and the artifact simulation (each fault moves the statistic it should)."""

import math

import numpy as np
import pytest
import torch

from bundle.data.region_cache import RegionScan
from bundle.engines.artifact_pretrain import ARTIFACTS, pretrain_encoder, simulate_artifacts
from bundle.engines.region_qa import ExactAugment, center_crop, fit_statistics_prior, scan_logits, train_region_qa
from bundle.evaluation.reference import REGION_FEATURES, region_features
from bundle.losses import OrdinalBCE


def test_exact_augment_keeps_pixel_values():
    x = torch.rand(6, 1, 12, 12)
    out = ExactAugment(8)(x, torch.Generator().manual_seed(0))
    assert out.shape == (6, 1, 8, 8)
    for i in range(6):  # each output is a whole-pixel window of its input, flipped or transposed: values kept
        values = set(np.round(x[i].numpy().ravel(), 6))
        assert set(np.round(out[i].numpy().ravel(), 6)) <= values
    centre = ExactAugment(8, flips=False, transpose=False, shift=False)(x)
    torch.testing.assert_close(centre, center_crop(x, 8))


def test_ordinal_loss_by_hand():
    loss = OrdinalBCE(1)
    b = loss.cutpoints()[0].detach()
    assert b[1] == 0 and b[0] < 0 < b[2] < b[3]
    z, score = torch.tensor([[0.7]]), torch.tensor([[4.0]])  # score 4: >= 2, 3, 4 true; >= 5 false
    expected = np.mean(
        [
            -math.log(1 / (1 + math.exp(-(0.7 - float(bk)))))
            if k <= 4
            else -math.log(1 - 1 / (1 + math.exp(-(0.7 - float(bk)))))
            for k, bk in zip((2, 3, 4, 5), b)
        ]
    )
    assert float(loss(z, score)) == pytest.approx(expected, rel=1e-5)
    weighted = OrdinalBCE(1, pos_weight=[3.0])  # the score >= 3 term's positive counts 3 times
    extra = 2 * -math.log(1 / (1 + math.exp(-0.7))) / 4
    assert float(weighted(z, score)) == pytest.approx(expected + extra, rel=1e-5)
    with pytest.raises(ValueError):
        OrdinalBCE(2, pos_weight=[1.0])


def _scans(n=8, size=20, seed=0):
    """Scans whose quality is their noise: noisy ones (odd) score 1-2 on every label, clean ones 4-5."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        base = np.full((6, size, size), 0.5, np.float32)
        base[:, 5:15, 5:15] = 0.9
        noisy = i % 2 == 1
        img = base + rng.normal(0, 0.25 if noisy else 0.01, base.shape).astype(np.float32)
        scores = np.full(4, 1.0 + i % 3 * 0.5 if noisy else 4.0 + (i // 2) % 2, np.float32).round()
        out.append(
            RegionScan(
                name=f"s{i}",
                patient=f"p{i}",
                images=np.clip(img, 0.01, 2).astype(np.float16),
                masks=np.zeros_like(img, bool),
                slices=np.arange(6),
                scores=scores,
                target=(scores >= 3).astype(np.float32),
            )
        )
    return out


@pytest.mark.parametrize("ordinal, loss_level", [(True, "slice"), (False, "scan")])
def test_training_learns_a_known_cue(ordinal, loss_level):
    torch.set_num_threads(1)
    train, test = _scans(8), _scans(4, seed=1)
    model = train_region_qa(
        train,
        network={"block_inplanes": [4, 8, 8, 8], "head_channels": 4, "qa_channels": 4},
        size=16,
        epochs=25,
        slices_per_scan=4,
        scans_per_batch=4,
        lr=1e-2,
        ordinal=ordinal,
        loss_level=loss_level,
        ema_decay=0.5,
    )
    logits = scan_logits(model, test, 16, ((), (0,)))
    assert logits.shape == (4, 4)
    clean, noisy = logits[[0, 2]], logits[[1, 3]]
    assert clean[:, 1].min() > noisy[:, 1].max(), logits  # sharpness/noise cue ranks every test scan right


def test_statistics_prior_is_the_logistic_regression_and_stays_fixed():
    from sklearn.linear_model import LogisticRegression

    from bundle.engines.region_qa import build_region_network

    torch.set_num_threads(1)
    train = _scans(8)
    small = {
        "block_inplanes": [4, 8, 8, 8],
        "head_channels": 4,
        "qa_channels": 4,
        "intensity_stats": True,
        "stats_skip": True,
    }
    model = fit_statistics_prior(build_region_network(**small), train, 16)
    # by hand: the statistics of every training slice, standardised, averaged per scan, one regression per attribute
    stats = [
        model.statistics(center_crop(torch.from_numpy(s.images.astype(np.float32))[:, None], 16)).double()
        for s in train
    ]
    every = torch.cat(stats)
    mean, std = every.mean(0), every.std(0)
    x = np.stack([((v - mean) / std).mean(0).numpy() for v in stats])
    y = np.stack([s.target for s in train]).astype(int)
    lr = LogisticRegression(class_weight="balanced", max_iter=5000).fit(x, y[:, 1])
    np.testing.assert_allclose(model.stats_skip.weight[1].numpy(), lr.coef_[0], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(float(model.stats_skip.bias[1]), lr.intercept_[0], rtol=1e-3, atol=1e-4)
    # the network's own normalisation gives the same standardised statistics, in training mode too
    model.train()
    slice_x = center_crop(torch.from_numpy(train[0].images.astype(np.float32))[:, None], 16)
    np.testing.assert_allclose(
        model.stats_norm(model.statistics(slice_x)).detach().numpy(),
        ((stats[0] - mean) / std).numpy(),
        rtol=1e-3,
        atol=1e-3,
    )
    # training keeps the fitted part as it is and learns the rest
    trained = train_region_qa(
        train, network=small, size=16, epochs=3, slices_per_scan=4, scans_per_batch=4, stats_prior=True, ema_decay=0.5
    )
    torch.testing.assert_close(trained.stats_skip.weight, model.stats_skip.weight)
    torch.testing.assert_close(trained.stats_norm.running_mean, model.stats_norm.running_mean)
    with pytest.raises(ValueError, match="stats_skip"):
        fit_statistics_prior(build_region_network(intensity_stats=True), train, 16)


def test_artifacts_move_their_statistics():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    r2 = (yy - 16) ** 2 + (xx - 16) ** 2
    # mid-grey tissue, a dark (nulled) ring, a bright blood pool and a small bright vessel
    img = 0.4 - 0.3 * ((r2 >= 60) & (r2 < 150)) + 0.4 * (r2 < 60) + 0.4 * ((yy - 4) ** 2 + (xx - 28) ** 2 < 6)
    img = img + rng.normal(0, 0.01, img.shape)
    x = torch.as_tensor(np.repeat(img[None, None], 4, 0), dtype=torch.float32)
    f = dict(zip(REGION_FEATURES, region_features(x[:, 0].numpy())))

    def after(name, severity=1.0):
        sev = torch.zeros(4, len(ARTIFACTS))
        sev[:, ARTIFACTS.index(name)] = severity
        y = simulate_artifacts(x, sev, torch.Generator().manual_seed(0))
        return dict(zip(REGION_FEATURES, region_features(y[:, 0].numpy()))), y

    blur, _ = after("blur")
    assert blur["gradient_rel"] < 0.8 * f["gradient_rel"]  # blur lowers the mean gradient magnitude
    noise, _ = after("noise")
    assert noise["laplacian_rel"] > 2 * f["laplacian_rel"]  # noise raises the Laplacian
    nulling, _ = after("poor_nulling")
    assert nulling["p05_rel"] > f["p05_rel"] + 0.1  # dark tissue raised
    faded, _ = after("faded_enhancement")
    assert faded["p99_rel"] < f["p99_rel"] - 0.05  # bright structures faded
    _, ghost = after("ghosting")
    assert float((ghost - x).abs().mean()) > 0.05  # a shifted copy added
    _, bias = after("bias")
    ratio = (bias / x)[0, 0].numpy()
    assert ratio.max() / ratio.min() > 1.3  # a smooth shading across the slice
    none, _ = after("blur", 0.0)
    assert none == pytest.approx(f)  # severity 0: unchanged


def test_pretraining_returns_a_loadable_encoder():
    torch.set_num_threads(1)
    clean = _scans(4)
    net = {"block_inplanes": [4, 8, 8, 8], "head_channels": 4, "qa_channels": 4}
    state, info = pretrain_encoder(clean, network=net, size=16, epochs=2, slices_per_scan=2, scans_per_batch=2)
    assert info["pretrain_scans"] == 4 and np.isfinite(info["pretrain_mse"])
    model = train_region_qa(_scans(4), network=net, size=16, epochs=1, slices_per_scan=2, init=state, ema_decay=0)
    assert set(model.state_dict()) == set(state)


def test_scan_prior_is_the_reference_regression_and_stays_fixed():
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from bundle.engines.region_qa import build_region_network, fit_scan_prior, slice_logits
    from bundle.networks import Ensemble
    from bundle.networks.qa import scan_context

    torch.set_num_threads(1)
    train = _scans(8)
    small = {"block_inplanes": [4, 8, 8, 8], "head_channels": 4, "qa_channels": 4, "scan_prior": True}
    model = build_region_network(**small).eval()
    feats = fit_scan_prior(model, train, 16, outputs=(0, 1, 2))
    # by hand: the reference's statistics of each scan's centre window, one balanced regression per attribute
    by_hand = np.stack([region_features(s.images.astype(np.float32)[:, 2:18, 2:18]) for s in train])
    np.testing.assert_allclose(feats.numpy(), by_hand, rtol=1e-5)
    y = np.stack([s.target for s in train]).astype(int)
    ref = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), LogisticRegression(class_weight="balanced"))
    expected = ref.fit(by_hand, y[:, 1]).decision_function(by_hand)
    prior = model.scan_prior(feats)
    np.testing.assert_allclose(prior[:, 1].numpy(), expected, rtol=1e-4, atol=1e-4)
    assert torch.all(prior[:, 3] == 0)  # fibrosis is not among the outputs: logit 0
    assert float(prior[1::2, 1].max()) < 0 < float(prior[::2, 1].min())  # noise is the cue: separated
    # the network adds the prior to its attribute logits (before the QA module) for every slice of the scan
    x = center_crop(torch.from_numpy(train[0].images.astype(np.float32))[:, None], 16)
    ctx = scan_context(model, x)
    torch.testing.assert_close(ctx, scan_context(model, x.flip(2).transpose(2, 3)))  # flips do not change it
    with torch.no_grad():
        plain = build_region_network(**{**small, "scan_prior": False})
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("scan_prior.")})
        plain.eval()
        torch.testing.assert_close(model(x, ctx)[:, :3], plain(x)[:, :3] + prior[0, :3], rtol=1e-5, atol=1e-5)
    assert scan_context(plain, x) is None
    with pytest.raises(ValueError, match="scan prior"):
        model(x)
    # training fits it, keeps it as fitted, and a scan's logit is the mean of its slices' (with the prior)
    trained = train_region_qa(
        train,
        network=small,
        size=16,
        epochs=2,
        slices_per_scan=4,
        scans_per_batch=4,
        scan_prior=["nulling", "sharpness", "enhancement", "fibrosis"],
    )
    assert float(trained.scan_prior.weight[3].abs().sum()) > 0  # fibrosis too
    refit = build_region_network(**small)
    fit_scan_prior(refit, train, 16, outputs=(0, 1, 2, 3))
    torch.testing.assert_close(trained.scan_prior.weight, refit.scan_prior.weight)
    logits = scan_logits(trained, train[:1], 16, ((), (0,)))[0]
    mean = slice_logits(trained, x, ((), (0,)), scan_features=ctx).mean((0, 1))
    np.testing.assert_allclose(logits, mean.numpy(), rtol=1e-5, atol=1e-5)
    # an ensemble passes the scan's features to every member
    ens = Ensemble.from_networks([trained, model], combine="logit").eval()
    assert ens.uses_scan_prior
    with torch.no_grad():
        torch.testing.assert_close(ens(x, ctx), (trained(x, ctx) + model(x, ctx)) / 2)
    with pytest.raises(ValueError, match="scan_prior"):
        train_region_qa(train, network=small, size=16, epochs=1, scan_prior="fibrosis")  # a list, not a name
    with pytest.raises(ValueError, match="scan_prior=True"):
        fit_scan_prior(build_region_network(block_inplanes=[4, 8, 8, 8]), train, 16, outputs=(0,))
