"""Put a network on its device in the requested memory format and precision, keeping its state dict plain."""

from __future__ import annotations

import functools

import torch

__all__ = ["AUTOCAST_DTYPES", "prepare_network"]

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _float_outputs(out):
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return {k: _float_outputs(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_float_outputs(v) for v in out)
    return out


def prepare_network(
    network: torch.nn.Module, device: str | torch.device = "cpu", channels_last: bool = False, autocast: str = "none"
) -> torch.nn.Module:
    """Move ``network`` to ``device``; optionally NHWC weights and a mixed-precision forward.

    Mixed precision wraps the module's own ``forward`` in ``torch.autocast`` (bfloat16 runs on CPUs and GPUs,
    needs no loss scaling) and returns float32 outputs, so losses and metrics stay in full precision. The
    module is not wrapped in another module, so its ``state_dict`` keys, checkpoints, DDP and ``torch.compile``
    are unaffected. MONAI's engines offer only CUDA float16 autocast with a gradient scaler.

    Args:
        network: the module (changed in place and returned).
        device: target device.
        channels_last: convert 4D weights to ``torch.channels_last``.
        autocast: "none", "bf16" or "fp16" ("fp16" only on CUDA).

    Returns:
        the same module.

    Raises:
        ValueError: for an unknown ``autocast`` or fp16 on CPU.
    """
    if autocast not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast must be one of {list(AUTOCAST_DTYPES)}, got {autocast!r}")
    device = torch.device(device)
    if autocast == "fp16" and device.type != "cuda":
        raise ValueError("autocast fp16 needs a CUDA device; use bf16 on the CPU")
    network = network.to(device)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    dtype = AUTOCAST_DTYPES[autocast]
    if dtype is not None:
        forward = network.forward

        @functools.wraps(forward)
        def autocast_forward(*args, **kwargs):
            with torch.autocast(device_type=device.type, dtype=dtype):
                out = forward(*args, **kwargs)
            return _float_outputs(out)

        network.forward = autocast_forward
    return network
