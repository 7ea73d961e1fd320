"""Training and prediction of the LA-region QA network on :class:`~bundle.data.region_cache.RegionScan` stacks.

The recipe, sized for a few dozen scored scans and two CPU cores (docs/qa_training.md has the ablation behind it):

- input: the LA region at a fixed pixel size (:func:`bundle.transforms.region.la_region_slices`), cut with a margin
  so that training shifts the window by whole pixels; augmentation is exact (flips, transposition, whole-pixel
  shifts): no interpolation, no intensity change, so blur, noise and contrast, the very quality cues, are untouched;
- every epoch draws ``slices_per_scan`` slices of every training scan (scans, not slices, weigh equally);
- loss: binary cross-entropy per label, positives weighted by the training part's negative/positive ratio
  (class-balanced); at ``loss_level="scan"`` on the scan-level logit of each scan's drawn slices as one bag
  (multiple-instance learning: :meth:`bundle.networks.QANet.forward_bags`, the mean logit, or the network's attention
  pooling where it has one), at ``"slice"`` on every slice with its scan's label;
- AdamW with a cosine schedule and an exponential moving average of the weights (MONAI-free on purpose: torch's
  ``AveragedModel``); the averaged network is the result, so no checkpoint is chosen on a handful of scans.

The scan's logit is the mean of its slices' logits over the flips of test-time augmentation (:func:`scan_logits`;
a network with attention pooling pools all of the scan's slices as one bag per flip).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bundle.data.region_cache import RegionScan
from bundle.transforms.region import center_window

__all__ = [
    "ExactAugment",
    "build_region_network",
    "center_crop",
    "fit_scan_prior",
    "fit_statistics_prior",
    "scan_input",
    "scan_logits",
    "slice_logits",
    "train_region_qa",
]

logger = logging.getLogger(__name__)


def build_region_network(**kwargs) -> torch.nn.Module:
    """The LA-region QA network: :class:`bundle.networks.QANet` with a compact encoder unless ``kwargs`` say
    otherwise (defaults: basic blocks ``[1, 1, 1, 1]``, widths ``[16, 32, 64, 128]``, 32 hidden units per head)."""
    from bundle.networks.qa import QANet

    args = {"layers": (1, 1, 1, 1), "block_inplanes": (16, 32, 64, 128), "head_channels": 32, "qa_channels": 16}
    args.update(kwargs)
    return QANet(**args)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` of ``(..., h, w)`` (for an even margin: the cut at ``size`` itself)."""
    h, w = x.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"cannot crop {size} pixels out of {h}x{w}")
    return center_window(x, size)


class ExactAugment:
    """Augmentation that keeps every pixel value: a random whole-pixel window of ``size`` out of a larger cut, random
    flips of either axis and a random transposition, drawn per slice.

    Args:
        size: output width (the network's input).
        flips: flip the two axes, each with probability 0.5.
        transpose: transpose with probability 0.5.
        shift: draw the window anywhere in the margin (False: always the centre).
    """

    def __init__(self, size: int, flips: bool = True, transpose: bool = True, shift: bool = True) -> None:
        if int(size) < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size, self.flips, self.transpose, self.shift = int(size), bool(flips), bool(transpose), bool(shift)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``x``: ``(N, C, H, W)`` with ``H, W >= size``; returns ``(N, C, size, size)``."""
        n, _, h, w = x.shape
        out = []
        r = torch.rand(n, 5, generator=generator)
        for i in range(n):
            top = int(r[i, 0] * (h - self.size + 1)) if self.shift else (h - self.size) // 2
            left = int(r[i, 1] * (w - self.size + 1)) if self.shift else (w - self.size) // 2
            s = x[i, :, top : top + self.size, left : left + self.size]
            if self.flips and r[i, 2] < 0.5:
                s = s.flip(-2)
            if self.flips and r[i, 3] < 0.5:
                s = s.flip(-1)
            if self.transpose and r[i, 4] < 0.5:
                s = s.transpose(-2, -1)
            out.append(s)
        return torch.stack(out)


def scan_input(scan: RegionScan, mask_channel: bool = False) -> torch.Tensor:
    """A scan's network input ``(S, C, h, w)`` float32: its LA-region slices, and with ``mask_channel`` its LA mask
    as channel 1 (for :class:`bundle.networks.QANet`'s ``la_stats``)."""
    x = torch.from_numpy(scan.images.astype(np.float32))[:, None]
    if mask_channel:
        x = torch.cat([x, torch.from_numpy(scan.masks.astype(np.float32))[:, None]], dim=1)
    return x


@torch.no_grad()
def fit_statistics_prior(
    model: torch.nn.Module, scans: Sequence[RegionScan], size: int, c: float = 1.0, seed: int = 0
) -> torch.nn.Module:
    """Fit, before training, the part of a :class:`bundle.networks.QANet` that reads its statistics: their
    normalisation (mean and standard deviation over the training slices) and the ``stats_skip`` map (a
    class-balanced logistic regression per attribute, scikit-learn, on each scan's mean normalised statistics:
    the scan logit is the mean of the slices', so a linear map of each slice's statistics gives the scan the
    regression's logit), both then fixed (:meth:`~bundle.networks.QANet.fix_statistics`,
    :meth:`~bundle.networks.QANet.fix_stats_skip`).

    On a few dozen scans a linear model of intensity statistics judges nulling and enhancement better than a network
    learns to from them (docs/qa_crossval.md); fixed, it is the network's starting point, and the encoder and heads
    learn what it leaves out.

    Args:
        model: a QANet with statistics and ``stats_skip``.
        scans: the training scans.
        size: the network's input width (the window's centre is used, as at prediction).
        c: inverse regularisation strength of the logistic regressions.
        seed: the solver's random state.

    Returns:
        ``model``, its statistics fixed.

    Raises:
        ValueError: for a model without ``stats_skip``.
    """
    from bundle.networks.qa import balanced_logistic

    if getattr(model, "stats_skip", None) is None:
        raise ValueError("fit_statistics_prior needs a QANet with stats_skip")
    mask_channel = bool(getattr(model, "la_stats", False))
    raw = [model.statistics(center_crop(scan_input(s, mask_channel), size)) for s in scans]
    every = torch.cat(raw).double()
    model.fix_statistics(every.mean(0).float(), every.std(0).float())
    x = torch.stack([model.stats_norm(v).mean(0) for v in raw]).numpy()  # as the fixed network normalises them
    y = np.stack([s.target for s in scans]).astype(int)
    weight, bias = balanced_logistic(x, y, range(3), 3, c=c, seed=seed)
    return model.fix_stats_skip(torch.from_numpy(weight), torch.from_numpy(bias))


def fit_scan_prior(
    model: torch.nn.Module,
    scans: Sequence[RegionScan],
    size: int,
    outputs: Sequence[int],
    c: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """Fit, before training, a network's :class:`bundle.networks.qa.ScanPrior` on the training scans' region
    statistics (each scan's window centre ``size``, as at prediction: :func:`bundle.networks.qa.scan_context`).

    Args:
        model: a QANet with ``scan_prior``.
        scans: the training scans.
        size: the network's input width.
        outputs: the logits the prior gives (indices of :data:`~bundle.data.datalist.SCORE_KEYS`); the others are 0.
        c: inverse regularisation strength of the logistic regressions.
        seed: the solver's random state.

    Returns:
        the scans' features ``(n, F)``, what training passes with their slices (``scan_features``).

    Raises:
        ValueError: for a model without a scan prior.
    """
    from bundle.networks.qa import scan_context

    if getattr(model, "scan_prior", None) is None:
        raise ValueError("fit_scan_prior needs a QANet built with scan_prior=True")
    feats = torch.stack([scan_context(model, center_crop(scan_input(s), size)) for s in scans])
    model.scan_prior.fit(feats.numpy(), np.stack([s.target for s in scans]), outputs, c=c, seed=seed)
    return feats


def _pos_weight(scans: Sequence[RegionScan]) -> torch.Tensor:
    """Negatives over positives per label, 1 where a class is absent, capped at 10 (as
    :func:`bundle.losses.balanced_pos_weight`)."""
    y = np.stack([s.target for s in scans])
    pos, neg = y.sum(0), len(y) - y.sum(0)
    w = np.where((pos > 0) & (neg > 0), neg / np.maximum(pos, 1), 1.0)
    return torch.as_tensor(np.clip(w, 0.1, 10.0), dtype=torch.float32)


def train_region_qa(
    train: Sequence[RegionScan],
    network: dict | None = None,
    size: int = 64,
    epochs: int = 40,
    slices_per_scan: int = 8,
    scans_per_batch: int = 8,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    ema_decay: float = 0.98,
    loss_level: str = "slice",
    ordinal: bool = True,
    balanced: bool = True,
    stats_prior: bool = False,
    scan_prior: Sequence[str] | None = None,
    seed: int = 0,
    init: dict | None = None,
    on_epoch: Callable[[int, float, torch.nn.Module], None] | None = None,
) -> torch.nn.Module:
    """Train the LA-region QA network on ``train`` scans; returns the weight-averaged network in eval mode.

    Args:
        train: the training scans (their stacks cut wider than ``size`` give the shifts room).
        network: :func:`build_region_network` arguments.
        size: the network's input width.
        epochs: passes; each draws ``slices_per_scan`` slices of every scan.
        slices_per_scan: slices drawn per scan per epoch (with replacement where a scan has fewer).
        scans_per_batch: scans per optimiser step (a batch holds ``scans_per_batch * slices_per_scan`` slices).
        lr, weight_decay: AdamW; the learning rate follows a cosine from ``lr`` to 0 with a 1-epoch warm-up.
        ema_decay: decay of the weights' exponential moving average (0: no averaging).
        loss_level: ``"slice"`` (each slice carries its scan's label) or ``"scan"`` (the bag logit of a scan's
            drawn slices carries it).
        ordinal: learn from the 1..5 scores, not only their binarisation: each logit ``z`` is a cumulative-link
            model, ``P(score >= k) = sigmoid(z - b_k)`` for ``k = 2..5`` with learned cut-points and ``b_3 = 0``, so
            ``z`` itself stays the "diagnostic" (score >= 3) logit (:class:`bundle.losses.OrdinalBCE`).
        balanced: weight positives by the negative/positive ratio of ``train`` per label.
        stats_prior: fit the statistics' normalisation and a logistic regression on them into the network's
            ``stats_skip`` before training, and keep them fixed (:func:`fit_statistics_prior`).
        scan_prior: labels (of :data:`~bundle.data.datalist.SCORE_KEYS`, e.g. ``["nulling"]``) that get a scan
            prior: the network is built with one, fitted on the training scans' region statistics for those labels
            (:func:`fit_scan_prior`) and kept fixed, so the network learns the residual; None or empty: none.
        seed: seeds the network's initialisation, the draws and the augmentation.
        init: a state dict to start from (e.g. an artifact-pretrained encoder; non-matching entries are skipped).
        on_epoch: called after each epoch with ``(epoch, mean loss, averaged network)``.

    Raises:
        ValueError: for unknown options or an empty training part.
    """
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    if loss_level not in ("slice", "scan"):
        raise ValueError(f"loss_level must be 'slice' or 'scan', got {loss_level!r}")
    if not train:
        raise ValueError("train_region_qa needs at least one training scan")
    from bundle.data.datalist import SCORE_KEYS

    scan_prior = list(scan_prior or [])
    if isinstance(scan_prior, str) or any(k not in SCORE_KEYS for k in scan_prior):
        raise ValueError(f"scan_prior must list labels of {list(SCORE_KEYS)}, got {scan_prior!r}")
    if min(int(epochs), int(slices_per_scan), int(scans_per_batch)) < 1 or not 0 <= float(ema_decay) < 1:
        raise ValueError("epochs, slices_per_scan and scans_per_batch must be >= 1 and ema_decay in [0, 1)")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_region_network(**{**(network or {}), **({"scan_prior": True} if scan_prior else {})})
    if init:
        own = model.state_dict()
        fit = {k: v for k, v in init.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(fit, strict=False)
        logger.info(f"region QA: {len(fit)} of {len(own)} tensors initialised from the given state")
    if stats_prior:
        fit_statistics_prior(model, train, size, seed=seed)
    outputs = [SCORE_KEYS.index(k) for k in scan_prior]
    feats = fit_scan_prior(model, train, size, outputs, seed=seed) if scan_prior else None
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True) if ema_decay else None
    aug = ExactAugment(size)
    images = [scan_input(s, model.la_stats) for s in train]
    targets = torch.as_tensor(np.stack([s.scores if ordinal else s.target for s in train]))
    pos_weight = _pos_weight(train) if balanced else torch.ones(targets.shape[1])
    from bundle.losses.qa import OrdinalBCE

    criterion = OrdinalBCE(targets.shape[1], pos_weight=pos_weight) if ordinal else None
    steps_per_epoch = math.ceil(len(train) / scans_per_batch)
    total = epochs * steps_per_epoch
    params = list(model.parameters()) + (list(criterion.parameters()) if criterion is not None else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(total - warm, 1)))
    )
    k = int(slices_per_scan)
    for epoch in range(int(epochs)):
        model.train()
        t0, losses = time.time(), []
        order = rng.permutation(len(train))
        for b in range(steps_per_epoch):
            idx = order[b * scans_per_batch : (b + 1) * scans_per_batch]
            pick = [rng.choice(len(images[i]), size=k, replace=len(images[i]) < k) for i in idx]
            x = torch.cat([images[i][torch.as_tensor(p)] for i, p in zip(idx, pick)])
            x = aug(x, gen)
            y = targets[torch.as_tensor(idx)]
            f = () if feats is None else (feats[torch.as_tensor(idx)],)  # each scan's features, for its prior
            if loss_level == "scan":  # the scan's drawn slices as one bag: mean logit, or attention pooling
                logits, y_ = model.forward_bags(x.view(len(idx), k, *x.shape[1:]), *f), y
            else:
                logits, y_ = model(x, *(v.repeat_interleave(k, 0) for v in f)), y.repeat_interleave(k, 0)
            if criterion is not None:
                loss = criterion(logits, y_)
            else:
                loss = F.binary_cross_entropy_with_logits(logits, y_, pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            losses.append(float(loss.detach()))
        result = ema.module if ema is not None else model
        if on_epoch is not None:
            on_epoch(epoch, float(np.mean(losses)), result)
        logger.debug(f"region QA epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f} ({time.time() - t0:.1f} s)")
    out = ema.module if ema is not None else model
    return out.eval()


def _flip_views(images: torch.Tensor, flips: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """``images`` ``(S, C, h, w)`` flipped along each entry of ``flips`` (in-plane axes 0/1; ``()``: as it is)."""
    return [images.flip([int(a) + 2 for a in f]) if len(f) else images for f in flips]


@torch.no_grad()
def slice_logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    flips: Sequence[Sequence[int]] = ((),),
    batch_size: int = 128,
    scan_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """The QA logits ``(T, S, 4)`` of one scan's slices ``(S, C, h, w)`` under each flip (in-plane axes 0/1); a
    network with a scan prior gets ``scan_features`` (:func:`bundle.networks.qa.scan_context`) with them."""
    model.eval()
    extra = () if scan_features is None else (scan_features,)
    out = []
    for v in _flip_views(images, flips):
        out.append(torch.cat([model(v[i : i + batch_size], *extra) for i in range(0, len(v), batch_size)]))
    return torch.stack(out)


def scan_logits(
    model: torch.nn.Module,
    scans: Sequence[RegionScan],
    size: int,
    flips: Sequence[Sequence[int]] = ((),),
) -> np.ndarray:
    """Each scan's logits ``(n, 4)``: the mean over its slices and the flips (the window's centre ``size``); the LA
    mask goes in as channel 1 where the network has ``la_stats``, the scan's features where it has a scan prior
    (:func:`bundle.networks.qa.scan_context`)."""
    from bundle.networks.qa import scan_context

    mask_channel = bool(getattr(model, "la_stats", False))
    out = []
    for s in scans:
        x = center_crop(scan_input(s, mask_channel), size)
        ctx = scan_context(model, x)
        if getattr(model, "pool", None) is not None:  # attention pooling: the scan's slices as one bag, per flip
            extra = () if ctx is None else (ctx[None],)
            with torch.no_grad():
                bags = [model.forward_bags(v[None], *extra)[0] for v in _flip_views(x, flips)]
            out.append(torch.stack(bags).mean(0).numpy())
            continue
        out.append(slice_logits(model, x, flips, scan_features=ctx).mean((0, 1)).numpy())
    return np.stack(out) if out else np.zeros((0, 4))
