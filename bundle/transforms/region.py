"""The LA region of a scan's slices at a fixed physical pixel size: the input of the LA-region QA network.

One function, :func:`la_region_slices`, cuts it for training, evaluation, inference and MONAI Label alike: a window of
``size`` x ``size`` pixels of ``pixel_mm`` mm, centred in-plane on the LA mask's centroid (over the whole scan, so the
window does not jump between slices), on each selected slice. The same anatomy gives the same pixels whatever the
field of view: a scan and the same scan inside a wider, dark field of view give the same crops.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bundle.transforms.slicing import in_plane_spacing

__all__ = [
    "REGION_FEATURES",
    "center_window",
    "la_centroid",
    "la_region_slices",
    "normalise_region",
    "region_features",
    "region_to_slice",
]


def la_centroid(mask: torch.Tensor | np.ndarray, axis: int) -> tuple[float, float]:
    """In-plane centroid (pixel indices, the two non-slice axes in order) of a 3D LA mask ``(X, Y, Z)`` or
    ``(1, X, Y, Z)``.

    Raises:
        ValueError: for an empty mask.
    """
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    m = m[0] if m.ndim == 4 else m
    if m.ndim != 3:
        raise ValueError(f"the LA mask must be 3D, got shape {tuple(m.shape)}")
    idx = torch.nonzero(m.movedim(int(axis), 0) > 0)
    if not len(idx):
        raise ValueError("the LA mask is empty: no LA region to cut")
    c = idx[:, 1:].double().mean(0)
    return float(c[0]), float(c[1])


def la_region_slices(
    volume: torch.Tensor,
    mask: torch.Tensor | np.ndarray,
    axis: int,
    selected: Sequence[int] | np.ndarray,
    pixel_mm: float = 0.625,
    size: int = 96,
    spacing: Sequence[float] | None = None,
) -> torch.Tensor:
    """The LA region of the ``selected`` slices, ``(S, 1, size, size)``.

    The window's centre is the LA centroid rounded to a whole pixel, so at the scan's own pixel size the crop copies
    pixels without interpolation; at another pixel size the slices are sampled bilinearly (antialiased by area
    averaging first when the window's pixels are coarser than the scan's). Outside the scan the window is 0.

    Args:
        volume: channel-first ``(1, X, Y, Z)`` intensities (a ``MetaTensor`` gives its spacing).
        mask: the LA mask in the volume's grid (``(X, Y, Z)`` or ``(1, X, Y, Z)``).
        axis: the spatial slice axis.
        selected: slice indices along ``axis``.
        pixel_mm: the window's pixel size (mm).
        size: the window's width in pixels.
        spacing: the in-plane spacing (mm) of the two non-slice axes; None reads it from ``volume``'s affine.

    Returns:
        float32 ``(len(selected), 1, size, size)``.

    Raises:
        ValueError: for a non-positive size or pixel size, an empty mask or slice indices outside the volume.
    """
    if float(pixel_mm) <= 0 or int(size) < 1:
        raise ValueError(f"pixel_mm and size must be positive, got {pixel_mm}, {size}")
    axis, size = int(axis), int(size)
    sel = torch.as_tensor(np.asarray(selected, dtype=np.int64).reshape(-1))
    v = volume.as_tensor() if hasattr(volume, "as_tensor") else torch.as_tensor(volume)
    stack = v[0].movedim(axis, 0).float()  # (S, a, b)
    if len(sel) and (int(sel.min()) < 0 or int(sel.max()) >= stack.shape[0]):
        raise ValueError(f"slice indices {sel.tolist()} outside a volume of {stack.shape[0]} slices")
    sp = tuple(float(s) for s in (spacing if spacing is not None else in_plane_spacing(volume, axis)))
    c0, c1 = (round(c) for c in la_centroid(mask, axis))
    x = stack[sel][:, None]  # (S, 1, a, b)
    if not len(sel):
        return torch.zeros((0, 1, size, size))
    factors = [max(1, int(np.floor(pixel_mm / s + 1e-6))) for s in sp]
    if max(factors) > 1:  # area-average to roughly the window's pixel size: no aliasing of noise and edges
        x = F.avg_pool2d(x, kernel_size=factors, stride=factors, ceil_mode=True, count_include_pad=False)
        sp = (sp[0] * factors[0], sp[1] * factors[1])
        c0, c1 = (c0 + 0.5) / factors[0] - 0.5, (c1 + 0.5) / factors[1] - 0.5
    offsets = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2) * float(pixel_mm)
    if size % 2 == 0:  # even width: the centre pixel sits just after the middle, as at the scan's own pixel size
        offsets = offsets + float(pixel_mm) / 2
    rows = c0 + offsets / sp[0]  # pixel coordinates along the first in-plane axis
    cols = c1 + offsets / sp[1]
    a, b = x.shape[2], x.shape[3]
    gy = (2 * rows / max(a - 1, 1) - 1).float()
    gx = (2 * cols / max(b - 1, 1) - 1).float()
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)  # (size, size, 2) as (x=col, y=row)
    grid = grid[None].expand(len(x), -1, -1, -1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def center_window(x: torch.Tensor | np.ndarray, size: int | None) -> torch.Tensor | np.ndarray:
    """The central ``size`` x ``size`` of ``(..., h, w)``; ``x`` itself for ``size`` None or not smaller.

    A training stack is cut wider than the network's window (so that training can shift it by whole pixels); its
    centre is the window that inference cuts (:func:`la_region_slices` at ``size``).
    """
    h, w = x.shape[-2:]
    if size is None or int(size) >= min(h, w):
        return x
    top, left = (h - int(size)) // 2, (w - int(size)) // 2
    return x[..., top : top + int(size), left : left + int(size)]


def normalise_region(
    stack: torch.Tensor | np.ndarray, target: float = 0.5, center: int | None = None
) -> torch.Tensor | np.ndarray:
    """A scan's LA-region stack scaled so that the median of its pixels inside the scan (above 0) is ``target``.

    Quality shows in intensities relative to the scan's own typical tissue (raised dark tissue, faded bright
    structures), which is what the reference's statistics measure; this puts every scan on that footing before the
    network sees it. The scale is taken over the whole stack (all the scan's LA slices), so one scan's slices keep
    their relative brightness.

    Args:
        stack: ``(S, h, w)`` (or any shape ending in ``h, w``).
        target: the median after scaling.
        center: take the median over the central ``center`` x ``center`` pixels only (:func:`center_window`): a
            training stack cut wider than the network's window is then scaled as inference scales that window.

    Returns:
        the scaled stack; unchanged where it has no pixel above 0.
    """
    window = center_window(stack, center)
    values = window[window > 0]
    if values.numel() if isinstance(values, torch.Tensor) else values.size:
        # the interpolated median, as numpy's (torch.median gives the lower middle value): both paths agree
        med = (
            float(torch.quantile(values.double(), 0.5))
            if isinstance(values, torch.Tensor)
            else float(np.median(values))
        )
        if med > 0:
            return stack * (float(target) / med)
    return stack


# statistics of a scan's whole LA-region stack, each relative to its median: the reference's features
# (docs/qa_crossval.md) and the QA network's scan prior (bundle.networks.ScanPrior)
REGION_FEATURES = ("p05_rel", "p20_rel", "p95_rel", "p99_rel", "spread_rel", "gradient_rel", "laplacian_rel")


def region_features(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """The :data:`REGION_FEATURES` of one scan's LA-region stack ``(S, h, w)`` (pixels at 0, outside the scan, are
    left out): the 5th/20th/95th/99th percentiles, the 5th-95th spread, the mean gradient magnitude (Sobel) and the
    mean absolute Laplacian, each over the median. Pooled over the whole stack: the spread of a scan's dark and bright
    tissue, not of each slice's. NaN where the stack has no pixel above 0; flips and transposition leave them as they
    are."""
    from scipy import ndimage

    x = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    inside = x > 0
    if not inside.any():
        return np.full(len(REGION_FEATURES), np.nan)
    v = x[inside]
    med = float(np.median(v)) + 1e-6
    p = np.percentile(v, [5, 20, 95, 99]) / med
    grad = np.stack([np.hypot(ndimage.sobel(a, 0), ndimage.sobel(a, 1)) for a in x])
    lap = np.stack([np.abs(ndimage.laplace(a)) for a in x])
    return np.array([*p, p[2] - p[0], grad[inside].mean() / med, lap[inside].mean() / med])


def region_to_slice(
    maps: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray,
    axis: int,
    shape: Sequence[int],
    spacing: Sequence[float],
    pixel_mm: float,
    size: int,
) -> np.ndarray:
    """Maps ``(k, size, size)`` on :func:`la_region_slices` windows put back into the slices' grid ``(k, *shape)``
    (0 outside the window): a HiResCAM map of the LA region overlaid on the whole slice."""
    m = torch.as_tensor(np.asarray(maps, dtype=np.float32))
    if m.ndim != 3 or not len(m):
        return np.zeros((0, *shape), np.float32)
    c0, c1 = (round(c) for c in la_centroid(mask, axis))
    shift = 0.5 if int(size) % 2 == 0 else 0.0
    k_rows = (torch.arange(shape[0], dtype=torch.float64) - c0) * float(spacing[0]) / pixel_mm + (size - 1) / 2 - shift
    k_cols = (torch.arange(shape[1], dtype=torch.float64) - c1) * float(spacing[1]) / pixel_mm + (size - 1) / 2 - shift
    gy = (2 * k_rows / max(size - 1, 1) - 1).float()
    gx = (2 * k_cols / max(size - 1, 1) - 1).float()
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None].expand(len(m), -1, -1, -1)
    out = F.grid_sample(m[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, 0].numpy()
