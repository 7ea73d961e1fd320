"""Stage 1 on a whole volume: a 2D network over resized axial slices, its output mapped back to the volume's grid."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SlidingWindowInferer
from monai.utils import ensure_tuple_rep

from bundle.transforms.restore import RestoreSlices
from bundle.transforms.slicing import ExtractSlices, resolve_slice_axis

__all__ = ["ResizedSliceInferer", "SliceOutput", "SpacingSliceInferer", "detector_inferer"]


class SliceOutput(NamedTuple):
    """Stage-1 output of one volume at the network's resolution.

    Attributes:
        slices: the volume's slices along ``axis`` as the network saw them, ``(S, 1, h, w)`` (the middle channel
            of a 2.5D input).
        logits: the network's output, ``(S, K, h, w)``.
        axis: the volume's spatial slice axis (0, 1 or 2).
        in_plane: the volume's in-plane size ``(a, b)`` (its spatial shape without ``axis``).
    """

    slices: torch.Tensor
    logits: torch.Tensor
    axis: int
    in_plane: tuple[int, int]


def _centre_channel(slices: torch.Tensor) -> torch.Tensor:
    """The slice itself out of a 2.5D stack ``(S, 2k + 1, h, w)`` (its middle channel), as ``(S, 1, h, w)``."""
    c = slices.shape[1]
    return slices[:, c // 2 : c // 2 + 1] if c > 1 else slices


class ResizedSliceInferer(Inferer):
    """Run a 2D network on every slice of a 3D volume, as the bundle's training saw them, and return a 3D output.

    Each channel-first volume ``(C, X, Y, Z)`` is cut along its slice axis (from the affine, as at training) and each
    slice resized to ``spatial_size`` (:class:`~bundle.transforms.ExtractSlices`); the network runs on batches of
    ``batch_size`` slices; its output is resized back to the slice's own size with the same interpolation convention
    (``align_corners=False``, so pixel centres map onto pixel centres) and restacked along the slice axis. The result
    has the input's spatial shape and its metadata (affine), so a thresholded output overlays the input
    (:class:`~bundle.transforms.RestoreSlices`).
    MONAI's ``SliceInferer`` instead runs sliding windows over unresized slices, which is not what the network was
    trained on.

    Args:
        spatial_size: the network's in-plane input size (the bundle's ``spatial_size``).
        slice_axis: spatial axis to slice along; None reads it from each volume's affine.
        batch_size: slices per network call.
        mode: interpolation of the image slices (``bilinear`` as at training).
    """

    def __init__(
        self,
        spatial_size: int | Sequence[int] = 128,
        slice_axis: int | None = None,
        batch_size: int = 32,
        mode: str = "bilinear",
    ) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.spatial_size = tuple(int(s) for s in ensure_tuple_rep(spatial_size, 2))
        self.slicer = ExtractSlices(spatial_size=self.spatial_size, slice_axis=slice_axis, mode=mode)
        self.restore = RestoreSlices(slice_axis=slice_axis, mode="bilinear")
        self.slice_axis = slice_axis
        self.batch_size = int(batch_size)
        self.resized_to: tuple[int, int] | None = self.spatial_size  # the slice size every volume is brought to

    def predict_slices(self, volume: torch.Tensor, network: Callable[..., torch.Tensor]) -> SliceOutput:
        """The network's output on every resized slice of one channel-first volume ``(C, X, Y, Z)``."""
        axis = resolve_slice_axis(volume, self.slice_axis)
        slices = self.slicer(volume, slice_axis=axis)
        in_plane = tuple(int(s) for i, s in enumerate(volume.shape[1:]) if i != axis)
        outputs = [network(slices[i : i + self.batch_size]) for i in range(0, len(slices), self.batch_size)]
        logits = torch.cat(outputs) if outputs else slices.new_zeros((0, 1, *self.spatial_size))
        return SliceOutput(_centre_channel(slices), logits, axis, in_plane)  # type: ignore[arg-type]

    def to_volume(self, logits: torch.Tensor, volume: torch.Tensor, axis: int) -> torch.Tensor:
        """Per-slice outputs ``(S, K, h, w)`` back to ``volume``'s grid ``(K, X, Y, Z)``: the inverse of the slicing
        (:class:`~bundle.transforms.RestoreSlices`; a ``MetaTensor`` with the volume's affine when it has one)."""
        return self.restore(logits, volume, slice_axis=axis)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        """
        Args:
            inputs: a batch of channel-first volumes ``(B, C, X, Y, Z)``.
            network: the 2D network, ``(N, C, h, w) -> (N, K, h, w)``.

        Returns:
            ``(B, K, X, Y, Z)``, a MetaTensor carrying the inputs' metadata when they have any.
        """
        outs = []
        for b in range(inputs.shape[0]):
            res = self.predict_slices(inputs[b], network)
            out = self.to_volume(res.logits, inputs[b], res.axis)
            outs.append(out.as_tensor() if isinstance(out, MetaTensor) else out)
        out = torch.stack(outs)
        if isinstance(inputs, MetaTensor):
            out = MetaTensor(out, meta=inputs.meta, applied_operations=inputs.applied_operations)
        return out


class SpacingSliceInferer(ResizedSliceInferer):
    """Stage 1 by physical pixel size: slices resampled to ``pixel_mm``, a sliding window over each, 2.5D input.

    Each slice along the slice axis is resampled to ``pixel_mm`` (from the affine; :class:`ExtractSlices`), so the
    same anatomy gives the same pixels whatever the field of view; MONAI's ``SlidingWindowInferer`` runs the network
    on ``roi_size`` windows of every slice (a slice smaller than the window is centre-padded with zeros, as the
    training canvas was); with ``context`` the network sees each slice with its neighbours as channels. The output is
    resampled back to the slice's own grid (:meth:`to_volume`), so a scan and the same scan inside a larger field of
    view get the same mask.

    Args:
        pixel_mm: in-plane pixel size (mm), as at training.
        roi_size: the window (the training canvas, ``spatial_size``).
        slice_axis: spatial axis to slice along; None reads it from each volume's affine.
        batch_size: windows per network call.
        context: neighbouring slices on each side as channels (as at training).
        context_mm: distance between those neighbours (None: adjacent slices).
        overlap: the windows' overlap.
        mode: interpolation of the image slices.
    """

    def __init__(
        self,
        pixel_mm: float = 1.25,
        roi_size: int | Sequence[int] = 128,
        slice_axis: int | None = None,
        batch_size: int = 32,
        context: int = 0,
        context_mm: float | None = None,
        overlap: float = 0.25,
        mode: str = "bilinear",
    ) -> None:
        super().__init__(spatial_size=roi_size, slice_axis=slice_axis, batch_size=batch_size, mode=mode)
        self.slicer = ExtractSlices(
            spatial_size=None,
            slice_axis=slice_axis,
            mode=mode,
            pixel_mm=pixel_mm,
            context=context,
            context_mm=context_mm,
        )
        self.window = SlidingWindowInferer(
            roi_size=self.spatial_size,
            sw_batch_size=self.batch_size,
            overlap=overlap,
            mode="gaussian",
            padding_mode="constant",
            cval=0.0,
        )
        self.pixel_mm = float(pixel_mm)
        self.resized_to = None

    def predict_slices(self, volume: torch.Tensor, network: Callable[..., torch.Tensor]) -> SliceOutput:
        """The network's output on every resampled slice of one channel-first volume ``(C, X, Y, Z)``."""
        axis = resolve_slice_axis(volume, self.slice_axis)
        slices = self.slicer(volume, slice_axis=axis)
        in_plane = tuple(int(s) for i, s in enumerate(volume.shape[1:]) if i != axis)
        chunk = max(1, self.batch_size)
        outputs = [self.window(slices[i : i + chunk], network) for i in range(0, len(slices), chunk)]
        logits = torch.cat(outputs) if outputs else slices.new_zeros((0, 1, *slices.shape[2:]))
        return SliceOutput(_centre_channel(slices), logits, axis, in_plane)  # type: ignore[arg-type]


def detector_inferer(
    spatial_size: int = 128,
    pixel_mm: float | None = None,
    context: int = 0,
    context_mm: float | None = None,
    slice_axis: int | None = None,
    batch_size: int = 32,
) -> ResizedSliceInferer:
    """Stage 1's inferer for the detector's preprocessing: by pixel size when ``pixel_mm`` is set, else resized.

    Args:
        spatial_size: the resize target, or with ``pixel_mm`` the window (the training canvas).
        pixel_mm: in-plane pixel size the detector was trained at; None: slices resized to ``spatial_size``.
        context: 2.5D neighbours on each side.
        context_mm: their distance in mm.
        slice_axis: spatial slice axis; None from the affine.
        batch_size: slices (windows) per network call.
    """
    if pixel_mm is None:
        if int(context):
            raise ValueError("context slices need pixel_mm (the resized-slice inferer is plain 2D)")
        return ResizedSliceInferer(spatial_size=spatial_size, slice_axis=slice_axis, batch_size=batch_size)
    return SpacingSliceInferer(
        pixel_mm=pixel_mm,
        roi_size=spatial_size,
        slice_axis=slice_axis,
        batch_size=batch_size,
        context=context,
        context_mm=context_mm,
    )
