"""Stage 2: the QA network (ResNet encoder, three attribute classifiers, a QA module) and its contrastive wrapper."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import ResNet
from monai.networks.nets.flexible_unet import SegmentationHead, UNetDecoder
from torch import nn

from bundle.data.datalist import SCORE_KEYS  # the order of the network's 4 logits
from bundle.networks.pooling import AttentionPooling
from bundle.transforms.region import REGION_FEATURES, region_features

__all__ = [
    "CAM_LAYER",
    "LA_STAT_QUANTILES",
    "QANet",
    "ScanPrior",
    "balanced_logistic",
    "SupConNet",
    "la_statistics",
    "load_encoder_weights",
    "qa_logits",
    "scan_context",
]

logger = logging.getLogger(__name__)

CAM_LAYER = "encoder.layer4"  # module path, from the QA network, of the encoder's last convolutional stage


def qa_logits(output: torch.Tensor | dict) -> torch.Tensor:
    """The ``(N, 4)`` QA logits of a QA network's output, whichever network produced it.

    Args:
        output: a tensor ``(N, 4)`` (baseline and contrastive networks) or a dict with key ``"qa"`` (the
            multi-task network, which adds ``"seg"``).

    Returns:
        logits ordered ``(nulling, sharpness, enhancement, fibrosis)``.

    Raises:
        ValueError: for anything else.
    """
    if isinstance(output, dict):
        output = output.get("qa")
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[1] != len(SCORE_KEYS):
        raise ValueError(
            f"expected QA logits of shape (N, {len(SCORE_KEYS)}) or a dict holding them under 'qa', "
            f"got {type(output).__name__} {getattr(output, 'shape', '')}"
        )
    return output


def load_encoder_weights(encoder: nn.Module, path: str) -> None:
    """Load a local encoder checkpoint (no download exists here) into ``encoder``.

    Accepted: the encoder's own state dict (what the contrastive pretraining saves as ``supcon_encoder.pt``), a
    full QA-network state dict (its ``encoder.`` entries are used), or either under a ``"model"`` key.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        WeightsError: (a ``ValueError``) one line naming the file, when it is unreadable or does not fit the encoder.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: encoder checkpoint not found")
    from bundle.networks.loading import fit_state_dict, read_state_dict

    state = read_state_dict(path, "encoder checkpoint")
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # a classifier's last layer is unused
    fit_state_dict(encoder, state, f"{path}: does not fit the QA encoder")
    logger.info(f"encoder weights loaded from {path}")


STAT_QUANTILES = (0.05, 0.2, 0.5, 0.8, 0.95, 0.99)  # of slice_statistics


def _selected_quantiles(flat: torch.Tensor, selected: torch.Tensor, qs: Sequence[float]) -> torch.Tensor:
    """Per row of ``flat`` ``(N, P)``, the quantiles ``qs`` (nearest rank) of its ``selected`` values; ``(N, len(qs))``,
    zeros for a row without any."""
    srt = torch.where(selected, flat, torch.full_like(flat, -float("inf"))).sort(dim=1).values  # unselected first
    k = selected.sum(1)
    start = (flat.shape[1] - k).float()
    q = torch.as_tensor(qs, dtype=torch.float32, device=flat.device)
    pos = (start[:, None] + q[None] * (k[:, None].float() - 1).clamp_min(0)).round().long()
    out = srt.gather(1, pos.clamp(0, flat.shape[1] - 1))
    return torch.where((k > 0)[:, None], out, torch.zeros_like(out))


def slice_statistics(x: torch.Tensor) -> torch.Tensor:
    """Per slice ``(N, 1, h, w)``: the :data:`STAT_QUANTILES` of its pixels above 0 (inside the scan), the mean
    absolute finite difference (gradient) and the mean absolute Laplacian, over those pixels; ``(N, 8)``.

    A slice with no pixel above 0 gets zeros.
    """
    flat = x.flatten(1).float()
    inside = flat > 0
    n_in = inside.sum(1)
    quantiles = _selected_quantiles(flat, inside, STAT_QUANTILES)
    img = x[:, :1].float()
    m = (img > 0).float()
    dx, dy = (img[..., :, 1:] - img[..., :, :-1]).abs(), (img[..., 1:, :] - img[..., :-1, :]).abs()
    grad = (dx[..., 1:-1, 1:] * m[..., 1:-1, 1:-1]).flatten(1).sum(1) + (
        dy[..., 1:, 1:-1] * m[..., 1:-1, 1:-1]
    ).flatten(1).sum(1)
    lap = img[..., 1:-1, 2:] + img[..., 1:-1, :-2] + img[..., 2:, 1:-1] + img[..., :-2, 1:-1] - 4 * img[..., 1:-1, 1:-1]
    lap = (lap.abs() * m[..., 1:-1, 1:-1]).flatten(1).sum(1)
    n_core = m[..., 1:-1, 1:-1].flatten(1).sum(1).clamp_min(1)
    out = torch.cat([quantiles, (grad / n_core)[:, None], (lap / n_core)[:, None]], dim=1)
    return torch.where((n_in > 0)[:, None], out, torch.zeros_like(out))


LA_STAT_QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.9, 0.99)  # of la_statistics: tissue around the LA, over the blood pool


def la_statistics(x: torch.Tensor, mask: torch.Tensor, ring: int = 3, eps: float = 1e-3) -> torch.Tensor:
    """Per slice, statistics of the tissue around the LA relative to the LA blood pool: what a reader judges
    myocardial nulling (dark tissue next to a bright pool), enhancement (bright structures against the pool) and
    sharpness (the pool's border) by.

    With ``B`` the median of the image inside the LA mask, the features are the :data:`LA_STAT_QUANTILES` of the
    tissue (pixels inside the scan, above 0, outside the mask dilated by ``ring`` pixels) over ``B``; the median of
    the ``ring``-pixel ring around the mask over ``B``; ``log B`` (the pool against the input's scale, which
    :func:`bundle.transforms.region.normalise_region` sets by the region's median); the coefficient of variation
    inside the mask eroded by one pixel (noise) and the mean absolute finite difference on the mask's border over
    ``B`` (edge sharpness); ``len(LA_STAT_QUANTILES) + 4`` numbers. A slice without LA pixels gets zeros.

    Args:
        x: ``(N, 1, h, w)`` images (channel 0 is used).
        mask: ``(N, 1, h, w)`` LA masks (> 0.5 is LA).
        ring: width in pixels of the ring (and of the margin that keeps the ring out of the tissue).
        eps: floor of ``B``.
    """
    img = x[:, :1].float()
    m = (mask[:, :1] > 0.5).float()
    dil = F.max_pool2d(m, 2 * ring + 1, stride=1, padding=ring)
    ero = 1.0 - F.max_pool2d(1.0 - m, 3, stride=1, padding=1)
    flat, mf = img.flatten(1), m.flatten(1) > 0
    tissue = (dil.flatten(1) == 0) & (flat > 0)
    ring_px = (dil.flatten(1) > 0) & ~mf

    b = _selected_quantiles(flat, mf, (0.5,))[:, 0].clamp_min(eps)
    feats = [
        _selected_quantiles(flat, tissue, LA_STAT_QUANTILES) / b[:, None],
        _selected_quantiles(flat, ring_px, (0.5,)) / b[:, None],
        torch.log(b)[:, None],
    ]
    inner = ero.flatten(1) > 0
    cnt = inner.sum(1).clamp_min(1).float()
    mean = (flat * inner).sum(1) / cnt
    var = ((flat - mean[:, None]) ** 2 * inner).sum(1) / cnt
    feats.append((var.sqrt() / b)[:, None])
    border = (m - ero).flatten(1) > 0
    dx = F.pad((img[..., :, 1:] - img[..., :, :-1]).abs(), (0, 1, 0, 0)).flatten(1)
    dy = F.pad((img[..., 1:, :] - img[..., :-1, :]).abs(), (0, 0, 0, 1)).flatten(1)
    edge = ((dx + dy) * border).sum(1) / border.sum(1).clamp_min(1).float()
    feats.append((edge / b)[:, None])
    out = torch.cat(feats, dim=1)
    return torch.where((mf.sum(1) > 0)[:, None], out, torch.zeros_like(out))


def balanced_logistic(
    x: np.ndarray, y: np.ndarray, outputs: Sequence[int], n_outputs: int, c: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced logistic regressions (scikit-learn) of the binary columns ``outputs`` of ``y`` on ``x``, as the
    weights ``(n_outputs, F)`` and biases ``(n_outputs,)`` of a linear map: other outputs stay 0, and an output with
    one class in ``y`` gets a constant logit of +-10. The fixed priors of the QA network (:class:`ScanPrior`,
    ``bundle.engines.region_qa.fit_statistics_prior``) are fitted with it."""
    from sklearn.linear_model import LogisticRegression

    weight, bias = np.zeros((int(n_outputs), x.shape[1])), np.zeros(int(n_outputs))
    for j in outputs:
        classes = np.unique(y[:, j])
        if len(classes) < 2:
            bias[j] = 10.0 if len(classes) and classes[0] == 1 else -10.0
            continue
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed).fit(x, y[:, j])
        weight[j], bias[j] = lr.coef_[0], lr.intercept_[0]
    return weight, bias


class ScanPrior(nn.Module):
    """A fixed logistic regression per output on a scan's :data:`~bundle.transforms.region.REGION_FEATURES` (the
    hand-made reference's statistics of the whole LA-region stack): logits ``(n, outputs)`` from features
    ``(n, F)``. Its parameters are buffers, so a checkpoint carries them and no optimiser changes them.

    Why a scan-level prior: on a few dozen scans, percentiles pooled over a scan's whole LA region judge nulling and
    enhancement better than the mean of per-slice statistics or a network (docs/qa_crossval.md); the network then
    learns a residual on top of this logit, which :class:`QANet` adds to every slice of the scan (``forward``'s
    ``scan_features``).

    Args:
        outputs: logits produced (the QA network's four).
    """

    def __init__(self, outputs: int = len(SCORE_KEYS)) -> None:
        super().__init__()
        n = len(REGION_FEATURES)
        self.register_buffer("fill", torch.zeros(n))  # a missing feature (NaN) takes the training median
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("scale", torch.ones(n))
        self.register_buffer("weight", torch.zeros(int(outputs), n))
        self.register_buffer("bias", torch.zeros(int(outputs)))

    @torch.no_grad()
    def fit(self, features: np.ndarray, targets: np.ndarray, outputs: Sequence[int], c: float = 1.0, seed: int = 0):
        """Fit the regressions of ``outputs`` (column indices) on ``features`` ``(n, F)`` and binary ``targets``
        ``(n, outputs)``: median imputation, standardisation, class-balanced logistic regression (scikit-learn).
        The other outputs stay at logit 0; an output with one class in ``targets`` gets a constant logit of +-10.

        Returns:
            the module itself.

        Raises:
            ValueError: for mismatched shapes or an output index out of range.
        """
        x, y = np.asarray(features, dtype=np.float64), np.asarray(targets).astype(int)
        if x.ndim != 2 or x.shape[1] != len(REGION_FEATURES) or len(y) != len(x) or y.ndim != 2:
            raise ValueError(
                f"features (n, {len(REGION_FEATURES)}) and targets (n, k) expected, got {x.shape}, {y.shape}"
            )
        if any(not 0 <= int(j) < len(self.bias) for j in outputs):
            raise ValueError(f"outputs must index the {len(self.bias)} logits, got {list(outputs)}")
        fill = np.nanmedian(x, axis=0) if len(x) else np.zeros(x.shape[1])
        fill = np.where(np.isfinite(fill), fill, 0.0)
        x = np.where(np.isfinite(x), x, fill)
        mean, scale = x.mean(0), x.std(0)
        scale = np.where(scale > 0, scale, 1.0)
        z = (x - mean) / scale
        weight, bias = balanced_logistic(z, y, outputs, len(self.bias), c=c, seed=seed)
        for name, value in (("fill", fill), ("mean", mean), ("scale", scale), ("weight", weight), ("bias", bias)):
            getattr(self, name).copy_(torch.as_tensor(value, dtype=torch.float32))
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, outputs)`` of features ``(N, F)``."""
        x = torch.where(torch.isfinite(features), features, self.fill.to(features.dtype))
        return ((x - self.mean) / self.scale) @ self.weight.T + self.bias


def scan_context(network: nn.Module, slices: torch.Tensor) -> torch.Tensor | None:
    """What ``network`` needs to know of the scan whose LA slices ``(S, C, h, w)`` (all of them, channel 0) it is
    given: the scan's :func:`~bundle.transforms.region.region_features` ``(F,)`` where it has a scan prior (its
    ``uses_scan_prior``; :class:`QANet`, or an :class:`~bundle.networks.Ensemble` of them), to pass as ``forward``'s
    ``scan_features`` with any of the scan's slices; None for a network without. Training, evaluation, inference and
    MONAI Label all get it from here. Flips and transposition of the slices do not change it."""
    if not getattr(network, "uses_scan_prior", False):
        return None
    return torch.as_tensor(region_features(slices[:, 0]), dtype=torch.float32, device=slices.device)


def _mlp(in_features: int, hidden: int, dropout: float) -> nn.Sequential:
    layers = [nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, 1)]
    return nn.Sequential(*layers)


class QANet(nn.Module):
    """The paper's QA network: a ResNet encoder, three attribute classifiers and a QA module (Sultan et al., 3.2).

    The encoder is a MONAI 2D ``ResNet`` (by default the resnet34 layout: basic blocks ``[3, 4, 6, 3]``, widths
    ``[64, 128, 256, 512]``) with the standard stride-2 stem; its globally pooled features feed three attribute
    classifiers (myocardium nulling, sharpness, enhancement of aorta and valves), each an MLP giving one logit. The
    QA module is an MLP on the concatenation of the three attribute outputs and predicts the quality of fibrosis
    assessment. With ``segmentation=True`` (multi-task QA) a U-Net decoder (MONAI's ``FlexibleUNet`` decoder and
    head) segments the LA blood pool from the encoder's feature maps.

    Contract (inference relies on it):

    - ``forward(x)``, ``x`` of shape ``(N, 1, H, W)`` (``H``, ``W`` multiples of 32; 128 in the bundle), returns the
      logits ``(N, 4)`` ordered ``(nulling, sharpness, enhancement, fibrosis)``; with ``segmentation=True`` a dict
      ``{"qa": (N, 4) logits, "seg": (N, 1, H, W) LA logits}``. :func:`qa_logits` accepts both.
    - ``encoder.layer4`` (module path :data:`CAM_LAYER`, ``"encoder.layer4"``) is the encoder's last convolutional
      stage, ``(N, 512, H/32, W/32)``: the target of HiResCAM.
    - :meth:`embed` gives the pooled encoder features ``(N, 512)`` (the embedding of the t-SNE pictures).

    Args:
        in_channels: input channels.
        layers: residual blocks per stage (resnet34: ``[3, 4, 6, 3]``).
        block_inplanes: channels per stage (resnet34: ``[64, 128, 256, 512]``).
        conv1_t_stride: stride of the stem convolution (2: the standard ResNet stem).
        head_channels: hidden units of each attribute classifier.
        qa_channels: hidden units of the QA module.
        qa_input: what the QA module sees: ``"logits"`` (the three attribute outputs, as the paper) or ``"hidden"``
            (the attribute classifiers' hidden layers, concatenated).
        dropout: dropout before the last layer of each classifier.
        segmentation: add the LA decoder (multi-task QA).
        decoder_channels: channels of the decoder's five upsampling blocks.
        pretrained_path: local checkpoint to initialise the encoder from (see :func:`load_encoder_weights`).
        freeze_encoder: freeze the encoder (contrastive QA): no gradients, batch-norm statistics kept. The state
            dict is the same either way: inference (HiResCAM, which needs the encoder's gradients) loads any
            checkpoint into a network built with the defaults.
        intensity_stats: also give the heads each slice's own intensity statistics (:func:`slice_statistics`:
            quantiles of the pixels inside the scan, mean gradient and Laplacian magnitude), batch-normalised: the
            cues of the hand-made reference, which a small encoder trained on a few dozen scans learns poorly from
            pixels (raised dark tissue, faded bright structures are properties of the intensity distribution).
        stats_skip: add a linear map of the normalised statistics to the three attribute logits (a logistic
            regression on the statistics beside the learned heads, which on a few dozen scans use them poorly).
        pooling: ``"attention"``: :meth:`forward_bags` pools a scan's slice features with learned gated attention
            (:class:`bundle.networks.pooling.AttentionPooling`) before the heads; ``"none"``: it averages the slices'
            logits. ``forward`` (one slice, a bag of one) is the same either way.
        la_stats: the input's channel 1 is the slice's LA mask (``in_channels`` >= 2); the heads also get
            :func:`la_statistics` (tissue and border relative to the blood pool), batch-normalised.
        scan_prior: hold a :class:`ScanPrior` (fitted before training, then fixed): ``forward`` then needs each slice's
            scan features (:func:`scan_context`), and the prior's logits of them are added to the attribute logits
            before the QA module sees them and to its fibrosis logit.

    Raises:
        ValueError: for unknown options or a checkpoint that does not fit.
    """

    def __init__(
        self,
        in_channels: int = 1,
        layers: Sequence[int] = (3, 4, 6, 3),
        block_inplanes: Sequence[int] = (64, 128, 256, 512),
        conv1_t_stride: int = 2,
        head_channels: int = 64,
        qa_channels: int = 16,
        qa_input: str = "logits",
        dropout: float = 0.0,
        segmentation: bool = False,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        pretrained_path: str | None = None,
        freeze_encoder: bool = False,
        intensity_stats: bool = False,
        la_stats: bool = False,
        stats_skip: bool = False,
        pooling: str = "none",
        scan_prior: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in ("none", "attention"):
            raise ValueError(f"pooling must be 'none' or 'attention', got {pooling!r}")
        if la_stats and in_channels < 2:
            raise ValueError(f"la_stats needs the LA mask as input channel 1 (in_channels >= 2), got {in_channels}")
        if len(layers) != 4 or len(block_inplanes) != 4:
            raise ValueError(f"layers and block_inplanes need 4 entries, got {list(layers)}, {list(block_inplanes)}")
        if qa_input not in ("logits", "hidden"):
            raise ValueError(f"qa_input must be 'logits' or 'hidden', got {qa_input!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if segmentation and len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 entries, got {list(decoder_channels)}")
        self.encoder = ResNet(
            block="basic",
            layers=list(layers),
            block_inplanes=list(block_inplanes),
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_stride=conv1_t_stride,
            feed_forward=False,
        )
        self.num_features = int(block_inplanes[-1])
        self.qa_input = qa_input
        self.intensity_stats = bool(intensity_stats)
        self.la_stats = bool(la_stats)
        n_stats = (len(STAT_QUANTILES) + 2) * self.intensity_stats + (len(LA_STAT_QUANTILES) + 4) * self.la_stats
        self.stats_norm = nn.BatchNorm1d(n_stats) if n_stats else None
        if stats_skip and not n_stats:
            raise ValueError("stats_skip needs intensity_stats or la_stats")
        self.stats_skip = nn.Linear(n_stats, 3) if stats_skip else None
        self.pool = AttentionPooling(self.num_features + n_stats, head_channels) if pooling == "attention" else None
        self.attribute_heads = nn.ModuleList(
            _mlp(self.num_features + n_stats, head_channels, dropout) for _ in range(3)
        )
        self.qa_head = _mlp(3 if qa_input == "logits" else 3 * head_channels, qa_channels, dropout)
        self.scan_prior = ScanPrior(len(SCORE_KEYS)) if scan_prior else None
        self.segmentation = bool(segmentation)
        if self.segmentation:
            encoder_channels = (in_channels, block_inplanes[0], *block_inplanes)
            self.decoder = UNetDecoder(
                spatial_dims=2,
                encoder_channels=encoder_channels,
                decoder_channels=list(decoder_channels),
                act=("relu", {"inplace": True}),
                norm=("batch", {"eps": 1e-3, "momentum": 0.1}),
                dropout=0.0,
                bias=False,
                upsample="nontrainable",
                pre_conv="default",
                interp_mode="nearest",
                align_corners=None,
                is_pad=True,
            )  # (FlexibleUNet's defaults)
            self.seg_head = SegmentationHead(spatial_dims=2, in_channels=decoder_channels[-1], out_channels=1)
        if pretrained_path:
            load_encoder_weights(self.encoder, pretrained_path)
        self.encoder_frozen = False
        self.stats_fixed = False
        if freeze_encoder:
            self.freeze_encoder()

    def freeze_encoder(self, frozen: bool = True) -> QANet:
        """Freeze (or unfreeze) the encoder: no gradients, and its batch-norm statistics stay as they are."""
        self.encoder_frozen = bool(frozen)
        for p in self.encoder.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)
        return self

    def train(self, mode: bool = True) -> QANet:
        """As ``nn.Module.train``, but a frozen encoder stays in eval mode (its batch-norm statistics are kept)."""
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
        if self.stats_fixed:
            self.stats_norm.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters that require gradients (all but a frozen encoder's): what the optimizer gets."""
        return (p for p in self.parameters() if p.requires_grad)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's five feature maps (stem, stages 1-4), as MONAI's ``ResNetFeatures`` gives them."""
        e = self.encoder
        x = e.act(e.bn1(e.conv1(x)))
        feats = [x]
        if not e.no_max_pool:
            x = e.maxpool(x)
        for layer in (e.layer1, e.layer2, e.layer3, e.layer4):
            x = layer(x)
            feats.append(x)
        return feats

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features ``(N, C)`` (the representation the heads and the contrastive loss see)."""
        return self.encoder(x)

    def heads(self, embedding: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        """The four logits from pooled encoder features (and, with ``stats_skip``, the normalised statistics, the
        last columns of ``embedding``), plus a scan prior's logits ``prior`` ``(N, 4)``: its attribute logits before
        the QA module sees them, its fibrosis logit after."""
        hidden = [h[:-1](embedding) for h in self.attribute_heads]
        attributes = torch.cat([h[-1](z) for h, z in zip(self.attribute_heads, hidden)], dim=1)
        if self.stats_skip is not None:
            attributes = attributes + self.stats_skip(embedding[:, self.num_features :])
        if prior is not None:
            attributes = attributes + prior[:, :3]
        qa_in = attributes if self.qa_input == "logits" else torch.cat(hidden, dim=1)
        qa = self.qa_head(qa_in)
        return torch.cat([attributes, qa if prior is None else qa + prior[:, 3:]], dim=1)

    @property
    def uses_scan_prior(self) -> bool:
        """Whether ``forward`` needs the scan's features (:func:`scan_context`)."""
        return self.scan_prior is not None

    def _prior(self, scan_features: torch.Tensor | None, n: int) -> torch.Tensor | None:
        """The scan prior's logits ``(n, 4)`` of ``scan_features`` (``(F,)`` for all ``n`` inputs, or ``(n, F)``)."""
        if self.scan_prior is None:
            return None
        if scan_features is None:
            raise ValueError(
                "this QA network has a scan prior: pass each slice's scan features "
                "(bundle.networks.qa.scan_context of the scan's LA slices)"
            )
        f = scan_features.to(self.scan_prior.bias.device, torch.float32)
        return self.scan_prior(f.expand(n, -1) if f.ndim == 1 else f)

    def statistics(self, x: torch.Tensor) -> torch.Tensor:
        """The raw (not normalised) statistics of slices ``x`` that the heads see: :func:`slice_statistics` with
        ``intensity_stats``, then :func:`la_statistics` with ``la_stats``; ``(N, 0)`` for a network without."""
        stats = [slice_statistics(x[:, :1])] if self.intensity_stats else []
        stats += [la_statistics(x[:, :1], x[:, 1:2])] if self.la_stats else []
        return torch.cat(stats, dim=1) if stats else x.new_zeros((len(x), 0))

    def _with_stats(self, embedding: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``embedding`` followed by the normalised statistics of ``x`` (where the network uses any)."""
        if self.stats_norm is None:
            return embedding
        return torch.cat([embedding, self.stats_norm(self.statistics(x))], dim=1)

    def fix_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> QANet:
        """Fix the statistics' normalisation to ``(s - mean) / std`` (as the batch norm computes it: ``std`` floored
        at the square root of its ``eps``); it is no longer learned nor updated by batches.

        Raises:
            ValueError: for a network without statistics.
        """
        if self.stats_norm is None:
            raise ValueError("fix_statistics needs intensity_stats or la_stats")
        bn = self.stats_norm
        with torch.no_grad():
            bn.running_mean.copy_(torch.as_tensor(mean, dtype=torch.float32).view(bn.num_features))
            var = torch.as_tensor(std, dtype=torch.float32).view(bn.num_features) ** 2
            bn.running_var.copy_((var - bn.eps).clamp_min(0.0))
            bn.weight.fill_(1.0)
            bn.bias.zero_()
        bn.requires_grad_(False)
        self.stats_fixed = True
        return self.train(self.training)

    def fix_stats_skip(self, weight: torch.Tensor, bias: torch.Tensor) -> QANet:
        """Set the ``stats_skip`` map to ``weight`` ``(3, n)`` and ``bias`` ``(3,)`` and stop learning it: a logistic
        regression fitted on the normalised statistics beforehand stays as it is, and the rest of the network learns
        what it leaves (:func:`bundle.engines.region_qa.fit_statistics_prior`).

        Raises:
            ValueError: for a network without ``stats_skip``.
        """
        if self.stats_skip is None:
            raise ValueError("fix_stats_skip needs stats_skip")
        with torch.no_grad():
            self.stats_skip.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            self.stats_skip.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        self.stats_skip.requires_grad_(False)
        return self

    def slice_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """What the heads see of each slice ``(N, C, H, W)``: pooled encoder features and the normalised statistics."""
        return self._with_stats(self.encoder(x), x)

    def forward_bags(self, x: torch.Tensor, scan_features: torch.Tensor | None = None) -> torch.Tensor:
        """Scan-level logits ``(B, 4)`` of ``B`` bags of ``N`` slices each, ``x`` ``(B, N, C, H, W)``: the heads on the
        attention-pooled slice features (``pooling="attention"``), else the mean of the slices' logits; with a scan
        prior, ``scan_features`` ``(B, F)`` are each bag's scan features."""
        b, n = x.shape[:2]
        emb = self.slice_embedding(x.flatten(0, 1))
        if self.pool is None:
            f = None if scan_features is None else scan_features.repeat_interleave(n, 0)
            return self.heads(emb, self._prior(f, b * n)).view(b, n, -1).mean(1)
        return self.heads(self.pool(emb.view(b, n, -1))[0], self._prior(scan_features, b))

    def forward(
        self, x: torch.Tensor, scan_features: torch.Tensor | None = None
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """QA logits ``(N, 4)`` of slices ``x`` ``(N, C, H, W)`` (multi-task: a dict with ``"qa"`` and ``"seg"``).

        Args:
            x: slices.
            scan_features: with a scan prior (``scan_prior=True``), the features of each slice's scan, ``(N, F)`` or
                ``(F,)`` for slices of one scan (:func:`scan_context`); ignored without one.

        Raises:
            ValueError: for a network with a scan prior called without ``scan_features``.
        """
        frozen = self.encoder_frozen and self.training and not self.segmentation
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):  # no graph through a frozen encoder
            if not self.segmentation:
                embedding = self.encoder(x)
            else:
                feats = self.features(x)
                embedding = torch.flatten(self.encoder.avgpool(feats[-1]), 1)
        logits = self.heads(self._with_stats(embedding, x), self._prior(scan_features, len(x)))
        if not self.segmentation:
            return logits
        seg = self.seg_head(self.decoder(feats, 4))
        if seg.shape[2:] != x.shape[2:]:
            seg = F.interpolate(seg, size=x.shape[2:], mode="bilinear", align_corners=False)
        return {"qa": logits, "seg": seg}


class SupConNet(nn.Module):
    """An encoder with a projection head, for supervised contrastive pretraining (Khosla et al.).

    Args:
        encoder: the QA network's encoder (shared: pretraining trains it in place), mapping ``(N, 1, H, W)`` to
            pooled features ``(N, in_features)``.
        in_features: size of the encoder's pooled features.
        hidden: hidden units of the projection head.
        projection_dim: size of the projected, L2-normalised embedding.

    Forward takes ``(N, V, 1, H, W)`` (``V`` augmented views per slice) and returns ``(N, V, projection_dim)``.
    """

    def __init__(
        self, encoder: nn.Module, in_features: int = 512, hidden: int = 512, projection_dim: int = 128
    ) -> None:
        super().__init__()
        if min(in_features, hidden, projection_dim) < 1:
            raise ValueError(f"sizes must be >= 1, got {in_features}, {hidden}, {projection_dim}")
        self.encoder = encoder
        self.projection = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, projection_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected views of shape (N, V, C, H, W), got {tuple(x.shape)}")
        n, v = x.shape[:2]
        z = self.projection(self.encoder(x.flatten(0, 1)))
        return F.normalize(z, dim=1).view(n, v, -1)
