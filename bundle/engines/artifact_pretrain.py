"""The fourth QA strategy's pretraining: the encoder learns to recognise simulated acquisition artifacts on clean
scans, with no expert score, before the QA heads are trained (:func:`bundle.engines.region_qa.train_region_qa`).

A site has many scans and few scores. Each clean LA-region slice gets, each with probability ``prob``, a random
severity in [0, 1] of six physically motivated faults (:data:`ARTIFACTS`), applied on the fly in this order:

- ``blur``: Gaussian blur, sigma 0.3 + 1.7 x severity pixels (MONAI's ``GaussianFilter``): unsharp borders;
- ``ghosting``: a copy of the slice shifted by half the field of view along a random axis, at 0.5 x severity
  of its intensity: respiratory ghosting;
- ``noise``: Rician noise of sigma 0.02 + 0.10 x severity: a low signal-to-noise ratio;
- ``bias``: a smooth multiplicative field (a random linear ramp of up to +-40 % x severity): coil shading;
- ``poor_nulling``: dark tissue raised towards the median, by up to 60 % x severity of its distance to it: poorly
  nulled myocardium;
- ``faded_enhancement``: intensities above the 80th percentile pulled towards it, by up to 70 % x severity:
  faded bright structures (aorta, valves, scar).

The encoder (with a linear head of six outputs) regresses the six severities (0 where absent) with a mean squared
error. TorchIO has ghosting and bias-field transforms, but it is a large dependency for two formulas; MONAI has the
blur and Rician noise, used here (``GaussianFilter``; the noise is its formula with a per-slice sigma).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ARTIFACTS", "clean_region_scans", "pretrain_encoder", "simulate_artifacts"]

logger = logging.getLogger(__name__)

ARTIFACTS = ("blur", "ghosting", "noise", "bias", "poor_nulling", "faded_enhancement")


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    from monai.networks.layers import GaussianFilter

    pad = int(4.0 * sigma) + 1  # the filter's truncation: edge pixels replicated, not zeros (no dark frame)
    padded = F.pad(x[None], (pad, pad, pad, pad), mode="replicate")
    return GaussianFilter(spatial_dims=2, sigma=float(sigma))(padded)[0, :, pad:-pad, pad:-pad]


def simulate_artifacts(
    x: torch.Tensor, severity: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Apply the :data:`ARTIFACTS` at ``severity`` ``(N, 6)`` (0: absent) to slices ``(N, 1, h, w)`` of 0..1
    intensities; returns the faulty slices, clipped at 0 (pixels outside the scan, at 0, stay 0)."""
    if x.ndim != 4 or severity.shape != (x.shape[0], len(ARTIFACTS)):
        raise ValueError(
            f"need slices (N, 1, h, w) and severities (N, {len(ARTIFACTS)}), got {tuple(x.shape)}, "
            f"{tuple(severity.shape)}"
        )
    out = []
    h, w = x.shape[-2:]
    for i in range(x.shape[0]):
        s = x[i].clone()
        inside = s > 0
        sev = severity[i]
        r = torch.rand(6, generator=generator)
        if sev[0] > 0:
            s = _blur(s, 0.3 + 1.7 * float(sev[0]))
        if sev[1] > 0:
            dim = 1 if r[0] < 0.5 else 2
            s = s + 0.5 * float(sev[1]) * torch.roll(s, shifts=(h if dim == 1 else w) // 2, dims=dim)
        if sev[3] > 0:
            yy = torch.linspace(-1, 1, h)[:, None]
            xx = torch.linspace(-1, 1, w)[None, :]
            angle = float(r[1]) * 2 * math.pi
            ramp = math.cos(angle) * yy + math.sin(angle) * xx
            s = s * (1 + 0.4 * float(sev[3]) * ramp)[None]
        v = s[inside] if inside.any() else s.flatten()
        med = float(v.median())
        if sev[4] > 0:
            s = torch.where(s < med, s + 0.6 * float(sev[4]) * (med - s), s)
        if sev[5] > 0:
            q = float(torch.quantile(v.float(), 0.8))
            s = torch.where(s > q, q + (1 - 0.7 * float(sev[5])) * (s - q), s)
        if sev[2] > 0:
            sigma = 0.02 + 0.10 * float(sev[2])
            n1 = torch.randn(s.shape, generator=generator) * sigma
            n2 = torch.randn(s.shape, generator=generator) * sigma
            s = torch.sqrt((s + n1) ** 2 + n2**2)
        out.append(torch.where(inside, s.clamp_min(0), torch.zeros_like(s)))
    return torch.stack(out)


def clean_region_scans(entries: list[dict], cache_dir: str, recipe: dict) -> list:
    """The LA region of clean scans (a datalist's ``segmentation`` list: image and LA label, no scores), cut and
    normalised as the QA scans are (:func:`bundle.data.region_cache.region_scans`)."""
    from bundle.data.region_cache import region_scans

    return region_scans(entries, cache_dir, recipe, require_scores=False)


def pretrain_encoder(
    clean: list,
    network: dict | None = None,
    size: int = 64,
    epochs: int = 60,
    slices_per_scan: int = 16,
    scans_per_batch: int = 8,
    lr: float = 2e-3,
    prob: float = 0.5,
    seed: int = 0,
) -> tuple[dict, dict]:
    """Pretrain the LA-region network's encoder to regress the severities of simulated artifacts on ``clean`` scans.

    Returns:
        ``(state dict of the whole QA network, whose encoder is pretrained, info)``; ``info`` holds the last epochs'
        mean squared error and the seconds taken.

    Raises:
        ValueError: for no clean scan.
    """
    import time

    from bundle.engines.region_qa import ExactAugment, build_region_network
    from bundle.transforms.region import normalise_region

    if not clean:
        raise ValueError("artifact pretraining needs clean scans (the datalist's segmentation list)")
    t0 = time.time()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_region_network(**(network or {}))
    head = torch.nn.Linear(model.num_features, len(ARTIFACTS))
    params = list(model.encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(clean) / scans_per_batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    aug = ExactAugment(size)
    images = [torch.from_numpy(s.images.astype(np.float32)) for s in clean]
    losses = []
    model.train()
    for _ in range(int(epochs)):
        order = rng.permutation(len(clean))
        for b in range(0, len(order), scans_per_batch):
            idx = order[b : b + scans_per_batch]
            pick = [
                rng.choice(len(images[i]), size=slices_per_scan, replace=len(images[i]) < slices_per_scan) for i in idx
            ]
            x = aug(torch.cat([images[i][torch.as_tensor(p)] for i, p in zip(idx, pick)])[:, None], gen)
            on = (torch.rand(len(x), len(ARTIFACTS), generator=gen) < prob).float()
            sev = on * torch.rand(len(x), len(ARTIFACTS), generator=gen)
            x = simulate_artifacts(x, sev, gen)
            x = torch.stack([normalise_region(xi, 0.5) for xi in x])
            loss = F.mse_loss(head(model.encoder(x)), sev)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    info = {
        "pretrain_mse": float(np.mean(losses[-10:])),
        "pretrain_seconds": time.time() - t0,
        "pretrain_scans": len(clean),
    }
    logger.info(
        f"artifact pretraining: {len(clean)} clean scans, final MSE {info['pretrain_mse']:.4f}, "
        f"{info['pretrain_seconds']:.0f} s"
    )
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, info
