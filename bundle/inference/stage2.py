"""Stage 2: quality assessment of the LA slices with test-time augmentation, the scan verdict, HiResCAM maps.

The bundle's QA network (:class:`bundle.networks.QANet`, any of its strategies) plugs in here, as does any
``torch.nn.Module`` that maps slices ``(N, 1, h, w)`` to logits ``(N, 4)`` ordered as :data:`SCORE_KEYS` (or to a
dict holding them under ``output_key``, as the multi-task network does under ``"qa"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.utils import ensure_tuple_rep

from bundle.data.datalist import SCORE_KEYS
from bundle.inference.weights import load_weights
from bundle.metrics.qa import VERDICT_RULES, is_diagnostic, scan_verdict
from bundle.networks.qa import CAM_LAYER, scan_context
from bundle.visualize.hirescam import HiResCAM

__all__ = ["SCORE_KEYS", "QALogits", "QAResult", "QAStage", "qa_verdict"]

FIBROSIS = SCORE_KEYS.index("fibrosis")


class QALogits(torch.nn.Module):
    """The QA network's logits ``(N, 4)`` whatever it returns, followed by their negatives: ``(N, 8)``.

    Column ``c`` is the evidence for "diagnostic" of output ``c``, column ``c + 4`` the evidence against it, so a
    class-activation map of column ``c + 4`` shows what pushed a slice towards "non-diagnostic". A network with a scan
    prior gets ``scan_features``, the features of the scan being assessed (:meth:`QAStage.predict` sets them).

    Args:
        network: the QA network; it returns a tensor ``(N, 4)`` or a dict with the logits under ``output_key``.
        output_key: the dict key of the QA logits (multi-task networks also return ``"seg"``).
    """

    def __init__(self, network: torch.nn.Module, output_key: str = "qa") -> None:
        super().__init__()
        self.net = network
        self.output_key = output_key
        self.scan_features: torch.Tensor | None = None  # the current scan's, for a network with a scan prior

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x) if self.scan_features is None else self.net(x, self.scan_features)
        if isinstance(out, Mapping):
            out = out[self.output_key]
        elif isinstance(out, (tuple, list)):
            out = out[0]
        if out.ndim != 2 or out.shape[1] != len(SCORE_KEYS):
            raise ValueError(
                f"the QA network must return logits (N, {len(SCORE_KEYS)}) ordered {SCORE_KEYS}, "
                f"got shape {tuple(out.shape)}"
            )
        return torch.cat([out, -out], dim=1)


def qa_verdict(probs: np.ndarray, threshold: float = 0.5, refer_uncertainty: float = 0.05, rule: str = "mode") -> dict:
    """The scan verdict from the QA probabilities of its LA slices under test-time augmentation.

    The verdict is :func:`bundle.metrics.scan_verdict`'s (the one rule evaluation uses too) on the slice
    probabilities averaged over the augmentations.

    Args:
        probs: ``(T, S, 4)`` sigmoid outputs for ``T`` augmentations (the first: none) of ``S`` slices.
        threshold: probability at or above which an output is "diagnostic".
        refer_uncertainty: spread above which the verdict is referred to a human.
        rule: :data:`bundle.metrics.VERDICT_RULES` (``"mode"``: the paper's slice vote, a tie non-diagnostic;
            ``"mean_logit"``: the LA-region network's).

    Returns:
        a dict with ``p`` (the four scan probabilities by ``rule``), ``slice_p`` (``(S, 4)``, mean over
        augmentations), ``slice_spread`` (``(S,)``, std of the fibrosis probability over augmentations),
        ``slice_votes`` (``(S,)`` 1/0), ``diagnostic`` (the verdict by ``rule``), ``diagnostic_mean`` (the mean
        probability at ``threshold``), ``tta_p`` (``(T,)`` scan fibrosis probability per augmentation by ``rule``),
        ``tta_verdicts`` (the verdict per augmentation), ``uncertainty`` (std of ``tta_p``), ``refer`` and
        ``refer_reasons``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3 or probs.shape[1] == 0 or probs.shape[2] != len(SCORE_KEYS):
        raise ValueError(f"probs must be (T, S>0, {len(SCORE_KEYS)}), got {probs.shape}")
    slice_p = probs.mean(0)
    scan = [scan_verdict(slice_p[:, j], threshold, rule) for j in range(len(SCORE_KEYS))]
    p = np.array([s[0] for s in scan])
    diagnostic = scan[FIBROSIS][1]
    diagnostic_mean = is_diagnostic(slice_p[:, FIBROSIS].mean(), threshold)
    per_view = [scan_verdict(probs[t, :, FIBROSIS], threshold, rule) for t in range(len(probs))]
    tta_p = np.array([v[0] for v in per_view])
    tta_verdicts = [v[1] for v in per_view]
    uncertainty = float(tta_p.std())
    reasons = []
    if uncertainty > refer_uncertainty:
        reasons.append(f"predictions spread over flips ({uncertainty:.3f} > {refer_uncertainty})")
    if rule == "mode" and diagnostic_mean != diagnostic:
        reasons.append(f"slice vote ({diagnostic}) and mean probability ({slice_p[:, FIBROSIS].mean():.3f}) disagree")
    if any(v != diagnostic for v in tta_verdicts):
        reasons.append(f"flipped inputs change the verdict ({tta_verdicts})")
    return {
        "p": p,
        "slice_p": slice_p,
        "slice_spread": probs[:, :, FIBROSIS].std(0),
        "slice_votes": is_diagnostic(slice_p[:, FIBROSIS], threshold),
        "diagnostic": diagnostic,
        "diagnostic_mean": diagnostic_mean,
        "tta_p": tta_p,
        "tta_verdicts": tta_verdicts,
        "uncertainty": uncertainty,
        "refer": bool(reasons),
        "refer_reasons": reasons,
        "rule": rule,
    }


@dataclass
class QAResult:
    """Stage-2 output of one scan: :func:`qa_verdict`'s dict, the deciding slices and their HiResCAM maps."""

    verdict: dict
    cam_slices: list[int] = field(default_factory=list)  # indices into the slices given to :meth:`QAStage.assess`
    cams: np.ndarray | None = None  # (k, h, w) in 0..1
    probs: np.ndarray | None = None  # (T, S, 4): the sigmoid outputs under each flip, from which the verdict came


class QAStage:
    """Stage 2: the QA network on a scan's LA slices, with flips as test-time augmentation, and its explanation.

    Args:
        network: the QA network (see :class:`QALogits` for what it must return).
        checkpoint: its weights (a state dict file); None uses the network as given.
        device: where to run it; None keeps the network where it is.
        tta_flips: the augmentations, each a list of in-plane axes to flip (0: rows, 1: columns); ``[]`` is the
            identity and should come first.
        threshold: probability at or above which an output is "diagnostic".
        refer_uncertainty: spread of the scan's fibrosis probability over the flips above which it is referred.
        batch_size: slices per network call.
        cam_layer: name of the layer explained by HiResCAM (the encoder's last convolutional stage, as in the QA
            network's ``named_modules()``); None or "" for no maps.
        cam_slices: how many deciding slices get a map.
        output_key: dict key of the QA logits when the network returns a dict.
        spatial_size: in-plane size of the slices the QA network was trained on; the two-stage step cuts the LA
            slices at this size when it differs from the detector's. None: the detector's slices as they are.
        rule: the scan verdict's rule (:data:`bundle.metrics.VERDICT_RULES`).
        temperature: calibration: the logits are divided by it before the sigmoid (one value, or one per output);
            None: 1.
        region: the LA-region input (``{"pixel_mm", "size", "normalise"}``): the two-stage step cuts each LA
            slice's window around the detected LA (:meth:`cut`) instead of resizing whole slices. None: whole slices.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        checkpoint: str | None = None,
        device: str | torch.device | None = None,
        tta_flips: Sequence[Sequence[int]] = ((), (0,), (1,), (0, 1)),
        threshold: float = 0.5,
        refer_uncertainty: float = 0.05,
        batch_size: int = 32,
        cam_layer: str | None = CAM_LAYER,
        cam_slices: int = 4,
        output_key: str = "qa",
        spatial_size: int | Sequence[int] | None = None,
        rule: str = "mode",
        temperature: float | Sequence[float] | None = None,
        region: Mapping | None = None,
    ) -> None:
        flips = [tuple(int(a) for a in f) for f in tta_flips]
        if not flips or any(a not in (0, 1) for f in flips for a in f):
            raise ValueError(f"tta_flips must be a non-empty list of in-plane axis lists (0, 1), got {tta_flips}")
        if not 0 < float(threshold) < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if float(refer_uncertainty) < 0:
            raise ValueError(f"refer_uncertainty must be >= 0, got {refer_uncertainty}")
        if int(batch_size) < 1 or int(cam_slices) < 0:
            raise ValueError(f"batch_size must be >= 1 and cam_slices >= 0, got {batch_size}, {cam_slices}")
        if rule not in VERDICT_RULES:
            raise ValueError(f"rule must be one of {VERDICT_RULES}, got {rule!r}")
        t = (
            np.ones(len(SCORE_KEYS))
            if temperature is None
            else np.broadcast_to(np.asarray(temperature, dtype=np.float64), (len(SCORE_KEYS),)).copy()
        )
        if not (np.isfinite(t).all() and (t > 0).all()):
            raise ValueError(f"temperature must be positive (one or {len(SCORE_KEYS)} values), got {temperature}")
        self.rule, self.temperature = rule, torch.as_tensor(t, dtype=torch.float32)
        self.region = None
        if region:
            unknown = set(region) - {"pixel_mm", "size", "normalise"}
            if unknown or float(region.get("pixel_mm", 0)) <= 0 or int(region.get("size", 0)) < 1:
                raise ValueError(f"region needs a positive pixel_mm and size (and optional normalise), got {region}")
            self.region = {
                "pixel_mm": float(region["pixel_mm"]),
                "size": int(region["size"]),
                "normalise": float(region.get("normalise") or 0.0),
            }
            spatial_size = self.region["size"]
        self.spatial_size = None if spatial_size is None else tuple(int(s) for s in ensure_tuple_rep(spatial_size, 2))
        if self.spatial_size is not None and min(self.spatial_size) < 1:
            raise ValueError(f"spatial_size must be positive, got {spatial_size}")
        if device is not None:
            network = network.to(device)
        if checkpoint:
            load_weights(network, checkpoint, "qa")
        self.model = QALogits(network, output_key).eval()
        self.flips = [tuple(a + 2 for a in f) for f in flips]  # tensor dims of (N, C, h, w)
        self.threshold, self.refer_uncertainty = float(threshold), float(refer_uncertainty)
        self.batch_size, self.cam_slices = int(batch_size), int(cam_slices)
        self.cam_layer = cam_layer or None
        if self.cam_layer and self.cam_layer not in dict(network.named_modules()):
            children = [n for n, _ in network.named_children()][-3:]
            raise ValueError(
                f"cam_layer {cam_layer!r} is not a module of the QA network ({type(network).__name__}); "
                f"its last children: {children}"
            )
        self._cam: HiResCAM | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def predict(self, slices: torch.Tensor) -> np.ndarray:
        """Sigmoid outputs ``(T, S, 4)`` of the QA network on one scan's ``slices`` ``(S, 1, h, w)`` under each flip,
        a network with a scan prior gets the scan's features (:func:`bundle.networks.qa.scan_context`)."""
        x = slices.to(self.device, torch.float32)
        self.model.scan_features = scan_context(self.model.net, x)  # for this scan's slices, here and in explain
        views = torch.cat([x.flip(f) if f else x for f in self.flips])
        logits = torch.cat(
            [
                self.model(views[i : i + self.batch_size])[:, : len(SCORE_KEYS)]
                for i in range(0, len(views), self.batch_size)
            ]
        )
        logits = logits / self.temperature.to(logits.device)
        return torch.sigmoid(logits).view(len(self.flips), len(x), -1).cpu().numpy()

    def cut(self, volume: torch.Tensor, mask: torch.Tensor, axis: int, selected: Sequence[int]) -> torch.Tensor:
        """The QA network's input for the ``selected`` slices of a preprocessed volume ``(1, X, Y, Z)`` with its LA
        ``mask``: the LA region (:func:`bundle.transforms.region.la_region_slices`, scaled by
        :func:`~bundle.transforms.region.normalise_region`), as at training; ``(S, 1, size, size)``.

        Raises:
            ValueError: when the stage has no ``region``.
        """
        from bundle.transforms.region import la_region_slices, normalise_region

        if self.region is None:
            raise ValueError("this QA stage takes whole slices (no region configured)")
        out = la_region_slices(volume, mask, axis, selected, self.region["pixel_mm"], self.region["size"])
        return normalise_region(out, self.region["normalise"]) if self.region["normalise"] else out

    def explain(self, slices: torch.Tensor, diagnostic: int) -> np.ndarray:
        """HiResCAM maps ``(S, h, w)`` in 0..1 of the fibrosis output for the verdict ``diagnostic`` (1 or 0)."""
        if self.cam_layer is None or len(slices) == 0:
            return np.zeros((0, *slices.shape[2:]), np.float32)
        if self._cam is None:  # hooks are registered once, on first use
            self._cam = HiResCAM(self.model, target_layers=f"net.{self.cam_layer}")
        target = FIBROSIS if diagnostic else FIBROSIS + len(SCORE_KEYS)  # evidence for, or against, "diagnostic"
        maps = self._cam(slices.to(self.device, torch.float32), class_idx=target)
        return maps[:, 0].detach().cpu().numpy().astype(np.float32)

    def assess(self, slices: torch.Tensor) -> QAResult:
        """Verdict of one scan from its LA slices ``(S, 1, h, w)``, with HiResCAM maps of the deciding slices.

        The deciding slices are those whose vote agrees with the verdict, most confident first.
        """
        probs = self.predict(slices)
        verdict = qa_verdict(probs, self.threshold, self.refer_uncertainty, self.rule)
        p = verdict["slice_p"][:, FIBROSIS]
        agree = np.flatnonzero(verdict["slice_votes"] == verdict["diagnostic"])
        order = agree[np.argsort(-np.abs(p[agree] - self.threshold), kind="stable")][: self.cam_slices]
        cams = None
        if len(order):
            cams = self.explain(slices[torch.as_tensor(order, dtype=torch.long)], verdict["diagnostic"])
        return QAResult(verdict, [int(i) for i in order], cams, probs)
