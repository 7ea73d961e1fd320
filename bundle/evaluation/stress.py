"""The LA detector under contrasts la2018 lacks: out-of-fold volumes altered before inference, scored as usual.

The issue behind it: an unseen patient with an unusually dark blood pool and a bright wall, where the detector found
0.3 ml of LA and the report said ``ok``. la2018 has no such scan, so one is made from each held-out volume with its
own label: the blood pool darkened and a shell around it brightened, with smoothed edges (``dark_pool``); global
gamma changes and noise stand for other inversion times and a lower signal. Each altered volume then goes through
inference's own normalisation, stage 1 and rule (:func:`bundle.evaluation.crossval.score_settings`), so a failure
shows as a low Dice and, where the plausibility bounds catch it, as a referred scan rather than ``ok``. A stress
test, not a target: it tells which augmentation the training lacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = ["CONTRASTS", "alter_contrast"]

logger = logging.getLogger(__name__)


def _shell(label: np.ndarray, spacing: Sequence[float], mm: float) -> np.ndarray:
    """The voxels within ``mm`` of the label, outside it (an LA wall stand-in)."""
    from scipy.ndimage import distance_transform_edt

    inside = label > 0
    distance = distance_transform_edt(~inside, sampling=[float(s) for s in spacing])
    return (~inside) & (distance <= mm)


def _dark_pool(image: np.ndarray, label: np.ndarray, spacing: Sequence[float], rng) -> np.ndarray:
    """The blood pool down to 40 % of its intensity and a 3 mm shell around it up to 160 % (clipped to the image's
    top), both weights smoothed by a Gaussian of 1.5 mm, so the change does not trace the label's exact edge (which
    a network trained with :class:`bundle.transforms.RandLabelContrastd`'s sharp mask would find for free)."""
    from scipy.ndimage import gaussian_filter

    sigma = [1.5 / float(s) for s in spacing]
    inside = gaussian_filter((label > 0).astype(np.float32), sigma)
    ring = gaussian_filter(_shell(label, spacing, 3.0).astype(np.float32), sigma) * (1.0 - inside)
    top = float(np.percentile(image[image > 0], 99.5)) if (image > 0).any() else float(image.max())
    out = image.astype(np.float32) * (1.0 - 0.6 * inside)
    return np.minimum(out * (1.0 + 0.6 * ring), np.maximum(top, out)).astype(np.float32)


def _gamma(g: float) -> Callable:
    def alter(image: np.ndarray, label: np.ndarray, spacing: Sequence[float], rng) -> np.ndarray:
        top = float(image.max()) or 1.0
        return (np.clip(image / top, 0, 1) ** g * top).astype(np.float32)

    return alter


def _noise(image: np.ndarray, label: np.ndarray, spacing: Sequence[float], rng) -> np.ndarray:
    """Rician noise of 8 % of the image's 99.5th percentile (a magnitude image's noise)."""
    sigma = 0.08 * float(np.percentile(image[image > 0], 99.5)) if (image > 0).any() else 0.0
    real = image + rng.normal(0.0, sigma, image.shape)
    imag = rng.normal(0.0, sigma, image.shape)
    return np.sqrt(real**2 + imag**2).astype(np.float32)


CONTRASTS: dict[str, Callable | None] = {
    "none": None,
    "dark_pool": _dark_pool,
    "gamma_0.5": _gamma(0.5),
    "gamma_2": _gamma(2.0),
    "noise": _noise,
}


def alter_contrast(name: str, image: torch.Tensor, label: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``image`` (a channel-first MetaTensor of raw intensities) altered by contrast ``name`` of :data:`CONTRASTS`.

    Args:
        name: the alteration (``none`` returns ``image``).
        image: ``(1, X, Y, Z)`` raw intensities with their affine.
        label: ``(1, X, Y, Z)`` LA mask in the same grid.
        seed: seed of the random parts (noise).

    Returns:
        the altered image, with ``image``'s metadata.

    Raises:
        ValueError: for an unknown name or a label of another shape.
    """
    from bundle.transforms.slicing import voxel_spacing

    if name not in CONTRASTS:
        raise ValueError(f"unknown contrast {name!r}; one of {sorted(CONTRASTS)}")
    if CONTRASTS[name] is None:
        return image
    if tuple(label.shape[-3:]) != tuple(image.shape[-3:]):
        raise ValueError(f"label shape {tuple(label.shape)} differs from the image's {tuple(image.shape)}")
    array = image[0].detach().cpu().numpy().astype(np.float32)
    mask = np.asarray(label[0].detach().cpu().numpy()) > 0
    altered = CONTRASTS[name](array, mask, voxel_spacing(image), np.random.default_rng(seed))
    out = image.clone()
    out[0] = torch.as_tensor(altered, dtype=out.dtype)
    return out
