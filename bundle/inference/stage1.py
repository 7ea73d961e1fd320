"""Stage 1 on a whole volume: a 2D network over resized axial slices, its output mapped back to the volume's grid."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import ensure_tuple_rep

from bundle.transforms.restore import RestoreSlices
from bundle.transforms.slicing import ExtractSlices, resolve_slice_axis

__all__ = ["ResizedSliceInferer", "SliceOutput"]


class SliceOutput(NamedTuple):
    """Stage-1 output of one volume at the network's resolution.

    Attributes:
        slices: the network's input, ``(S, C, h, w)``: the volume's slices along ``axis``, resized.
        logits: the network's output, ``(S, K, h, w)``.
        axis: the volume's spatial slice axis (0, 1 or 2).
        in_plane: the volume's in-plane size ``(a, b)`` (its spatial shape without ``axis``).
    """

    slices: torch.Tensor
    logits: torch.Tensor
    axis: int
    in_plane: tuple[int, int]


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
        self, spatial_size: int | Sequence[int] = 128, slice_axis: int | None = None, batch_size: int = 32,
        mode: str = "bilinear",
    ) -> None:  # fmt: skip
        super().__init__()
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.spatial_size = tuple(int(s) for s in ensure_tuple_rep(spatial_size, 2))
        self.slicer = ExtractSlices(spatial_size=self.spatial_size, slice_axis=slice_axis, mode=mode)
        self.restore = RestoreSlices(slice_axis=slice_axis, mode="bilinear")
        self.slice_axis = slice_axis
        self.batch_size = int(batch_size)

    def predict_slices(self, volume: torch.Tensor, network: Callable[..., torch.Tensor]) -> SliceOutput:
        """The network's output on every resized slice of one channel-first volume ``(C, X, Y, Z)``."""
        axis = resolve_slice_axis(volume, self.slice_axis)
        slices = self.slicer(volume, slice_axis=axis)
        in_plane = tuple(int(s) for i, s in enumerate(volume.shape[1:]) if i != axis)
        outputs = [network(slices[i : i + self.batch_size]) for i in range(0, len(slices), self.batch_size)]
        logits = torch.cat(outputs) if outputs else slices.new_zeros((0, 1, *self.spatial_size))
        return SliceOutput(slices, logits, axis, in_plane)  # type: ignore[arg-type]

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
