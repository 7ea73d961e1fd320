"""Stage 2: the QA network (ResNet encoder, three attribute classifiers, a QA module) and its contrastive wrapper."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from monai.networks.nets import ResNet
from monai.networks.nets.flexible_unet import SegmentationHead, UNetDecoder

from bundle.data.datalist import SCORE_KEYS  # the order of the network's 4 logits

__all__ = ["CAM_LAYER", "QANet", "SupConNet", "load_encoder_weights", "qa_logits"]

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
        raise ValueError(f"expected QA logits of shape (N, {len(SCORE_KEYS)}) or a dict holding them under 'qa', "
                         f"got {type(output).__name__} {getattr(output, 'shape', '')}")  # fmt: skip
    return output


def load_encoder_weights(encoder: nn.Module, path: str) -> None:
    """Load a local encoder checkpoint (no download exists here) into ``encoder``.

    Accepted: the encoder's own state dict (what the contrastive pretraining saves as ``supcon_encoder.pt``), a
    full QA-network state dict (its ``encoder.`` entries are used), or either under a ``"model"`` key.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: naming the file, when its entries do not fit the encoder.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: encoder checkpoint not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # a classifier's last layer is unused
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"{path}: does not fit the QA encoder ({first})") from None
    logger.info(f"encoder weights loaded from {path}")


STAT_QUANTILES = (0.05, 0.2, 0.5, 0.8, 0.95, 0.99)  # of slice_statistics


def slice_statistics(x: torch.Tensor) -> torch.Tensor:
    """Per slice ``(N, 1, h, w)``: the :data:`STAT_QUANTILES` of its pixels above 0 (inside the scan), the mean
    absolute finite difference (gradient) and the mean absolute Laplacian, over those pixels; ``(N, 8)``.

    A slice with no pixel above 0 gets zeros.
    """
    flat = x.flatten(1).float()
    inside = flat > 0
    n_in = inside.sum(1)
    srt = flat.sort(dim=1).values  # the zeros (outside) come first
    start = (flat.shape[1] - n_in).float()
    q = torch.as_tensor(STAT_QUANTILES, dtype=torch.float32, device=x.device)
    pos = (start[:, None] + q[None] * (n_in[:, None].float() - 1).clamp_min(0)).round().long()
    quantiles = srt.gather(1, pos.clamp(0, flat.shape[1] - 1))
    img = x[:, :1].float()
    m = (img > 0).float()
    dx, dy = (img[..., :, 1:] - img[..., :, :-1]).abs(), (img[..., 1:, :] - img[..., :-1, :]).abs()
    grad = (dx[..., 1:-1, 1:] * m[..., 1:-1, 1:-1]).flatten(1).sum(1) + (dy[..., 1:, 1:-1] * m[..., 1:-1, 1:-1]).flatten(1).sum(1)
    lap = (img[..., 1:-1, 2:] + img[..., 1:-1, :-2] + img[..., 2:, 1:-1] + img[..., :-2, 1:-1] - 4 * img[..., 1:-1, 1:-1])
    lap = (lap.abs() * m[..., 1:-1, 1:-1]).flatten(1).sum(1)
    n_core = m[..., 1:-1, 1:-1].flatten(1).sum(1).clamp_min(1)
    out = torch.cat([quantiles, (grad / n_core)[:, None], (lap / n_core)[:, None]], dim=1)
    return torch.where((n_in > 0)[:, None], out, torch.zeros_like(out))


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
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(block_inplanes) != 4:
            raise ValueError(f"layers and block_inplanes need 4 entries, got {list(layers)}, {list(block_inplanes)}")
        if qa_input not in ("logits", "hidden"):
            raise ValueError(f"qa_input must be 'logits' or 'hidden', got {qa_input!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if segmentation and len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 entries, got {list(decoder_channels)}")
        self.encoder = ResNet(block="basic", layers=list(layers), block_inplanes=list(block_inplanes), spatial_dims=2,
                              n_input_channels=in_channels, conv1_t_stride=conv1_t_stride, feed_forward=False)  # fmt: skip
        self.num_features = int(block_inplanes[-1])
        self.qa_input = qa_input
        self.intensity_stats = bool(intensity_stats)
        n_stats = len(STAT_QUANTILES) + 2 if self.intensity_stats else 0
        self.stats_norm = nn.BatchNorm1d(n_stats) if self.intensity_stats else None
        self.attribute_heads = nn.ModuleList(_mlp(self.num_features + n_stats, head_channels, dropout)
                                             for _ in range(3))  # fmt: skip
        self.qa_head = _mlp(3 if qa_input == "logits" else 3 * head_channels, qa_channels, dropout)
        self.segmentation = bool(segmentation)
        if self.segmentation:
            encoder_channels = (in_channels, block_inplanes[0], *block_inplanes)
            self.decoder = UNetDecoder(spatial_dims=2, encoder_channels=encoder_channels,
                                       decoder_channels=list(decoder_channels), act=("relu", {"inplace": True}),
                                       norm=("batch", {"eps": 1e-3, "momentum": 0.1}), dropout=0.0, bias=False,
                                       upsample="nontrainable", pre_conv="default", interp_mode="nearest",
                                       align_corners=None, is_pad=True)  # fmt: skip  (FlexibleUNet's defaults)
            self.seg_head = SegmentationHead(spatial_dims=2, in_channels=decoder_channels[-1], out_channels=1)
        if pretrained_path:
            load_encoder_weights(self.encoder, pretrained_path)
        self.encoder_frozen = False
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

    def heads(self, embedding: torch.Tensor) -> torch.Tensor:
        """The four logits from pooled encoder features."""
        hidden = [h[:-1](embedding) for h in self.attribute_heads]
        attributes = torch.cat([h[-1](z) for h, z in zip(self.attribute_heads, hidden)], dim=1)
        qa_in = attributes if self.qa_input == "logits" else torch.cat(hidden, dim=1)
        return torch.cat([attributes, self.qa_head(qa_in)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        frozen = self.encoder_frozen and self.training and not self.segmentation
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):  # no graph through a frozen encoder
            if not self.segmentation:
                embedding = self.encoder(x)
            else:
                feats = self.features(x)
                embedding = torch.flatten(self.encoder.avgpool(feats[-1]), 1)
        if self.intensity_stats:
            embedding = torch.cat([embedding, self.stats_norm(slice_statistics(x))], dim=1)
        logits = self.heads(embedding)
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
        self.projection = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, projection_dim))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected views of shape (N, V, C, H, W), got {tuple(x.shape)}")
        n, v = x.shape[:2]
        z = self.projection(self.encoder(x.flatten(0, 1)))
        return F.normalize(z, dim=1).view(n, v, -1)
