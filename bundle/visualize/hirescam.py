"""HiResCAM (Draelos & Carin, 2020), on top of MONAI's class-activation-map hooks.

MONAI offers CAM, GradCAM and GradCAM++; GradCAM averages each channel's gradient over space before weighting the
activations, which can highlight regions the model did not use. HiResCAM keeps the gradient's spatial layout: the
map is the element-wise product of the class score's gradient and the feature maps, summed over channels. For a
layer followed by global average pooling and a linear layer the two coincide; otherwise only HiResCAM is faithful.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from monai.visualize import GradCAM
from monai.visualize.class_activation_maps import default_upsampler

__all__ = ["HiResCAM", "scale_to_unit"]


def scale_to_unit(x: torch.Tensor) -> torch.Tensor:
    """Scale each map of a batch ``(B, 1, ...)`` by its maximum, so maps lie in 0..1 and zero stays zero.

    (MONAI's ``default_normalizer`` maps each map's min..max to 1..0, flipping it: right for some uses, not here.)
    """
    peak = x.flatten(1).amax(1).clamp_min(torch.finfo(x.dtype).tiny)
    return x / peak.view(-1, *[1] * (x.ndim - 1))


class HiResCAM(GradCAM):
    """HiResCAM: ``ReLU(sum_k dy_c/dA_k * A_k)`` over the channels ``k`` of a target layer's output ``A``.

    Args:
        nn_module: the network; it must return logits ``(B, n_classes)``.
        target_layers: name of the layer (as in ``named_modules()``) whose output is explained.
        upsampler: resizes the map to the input's spatial size (MONAI's default: bilinear interpolation).
        postprocessing: applied to the upsampled maps (default: :func:`scale_to_unit`).
        truncate_graph: differentiate from the target layer on only (same map, a fraction of the cost); False
            differentiates the whole network as MONAI's GradCAM does.

    Example::

        cam = HiResCAM(resnet, target_layers="layer4")
        maps = cam(x, class_idx=3)  # (B, 1, H, W) in 0..1
    """

    def __init__(
        self,
        nn_module: torch.nn.Module,
        target_layers: str,
        upsampler: Callable = default_upsampler,
        postprocessing: Callable = scale_to_unit,
        truncate_graph: bool = True,
    ) -> None:
        super().__init__(
            nn_module=nn_module, target_layers=target_layers, upsampler=upsampler, postprocessing=postprocessing
        )
        self.truncate_graph = bool(truncate_graph)

    @contextmanager
    def _graph_from(self, layer: str):
        """Differentiate from ``layer``'s output on only: the parameters and layers before it are left out.

        The map needs the gradient at the target layer alone; without this, the backward pass would also compute
        every parameter's gradient and run through the whole network (several times the forward's cost).
        """
        module = self.nn_module.get_layer(layer)
        params = list(self.nn_module.model.parameters())
        flags = [p.requires_grad for p in params]

        def start_here(_module, _input, output):
            # a clone of a fresh leaf: later in-place operations on it stay legal
            return output.detach().requires_grad_(True).clone() if torch.is_tensor(output) else output

        for p in params:
            p.requires_grad_(False)
        handle = module.register_forward_hook(start_here)
        try:
            with warnings.catch_warnings():  # no input needs a gradient: that is the point
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                yield
        finally:
            handle.remove()
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)

    def compute_map(self, x, class_idx=None, retain_graph=False, layer_idx=-1, **kwargs):  # type: ignore[override]
        """The raw map ``(B, 1, *feature_size)`` before upsampling and postprocessing."""
        layer = self.nn_module.target_layers[layer_idx]
        if self.truncate_graph:
            x = x.detach()  # nothing before the target layer is differentiated
        with self._graph_from(layer) if self.truncate_graph else nullcontext(), torch.enable_grad():
            _, acti, grad = self.nn_module(x, class_idx=class_idx, retain_graph=retain_graph, **kwargs)
        acti, grad = acti[layer_idx], grad[layer_idx]
        return F.relu((grad * acti).sum(1, keepdim=True)).detach()
