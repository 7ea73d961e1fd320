"""Build a network from a bundle config and load a checkpoint into it (e.g. the LA detector inside QA workflows)."""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

__all__ = ["load_network"]

logger = logging.getLogger(__name__)


def load_network(
    config_file: str | list[str],
    ckpt_path: str,
    network_id: str = "network_def",
    device: str | torch.device = "cpu",
    hint: str = "",
) -> nn.Module:
    """Instantiate ``network_id`` of a config and load a state-dict checkpoint into it, in eval mode.

    The QA workflows override ``network_def``, so they build the LA detector from the file that defined it:
    ``configs/common.yaml``, or the ``config.json`` a detector run saved (when it was trained with other network
    arguments).

    Args:
        config_file: config file(s) holding ``network_id``.
        ckpt_path: state dict written by MONAI's ``CheckpointSaver``.
        network_id: id of the network definition in the config.
        device: where to put the network.
        hint: appended to the error when the checkpoint is missing (e.g. the command that produces it).

    Returns:
        the network, weights loaded, in eval mode.

    Raises:
        SystemExit: with one line naming the file, when the checkpoint is missing or does not fit.
    """
    from monai.bundle import ConfigParser

    if not os.path.isfile(ckpt_path):
        raise SystemExit(f"ERROR: no checkpoint at {ckpt_path}" + (f"; {hint}" if hint else ""))
    parser = ConfigParser()
    parser.read_config(config_file)
    if network_id not in parser:
        raise SystemExit(f"ERROR: {config_file}: no '{network_id}' to build the network of {ckpt_path} from")
    net = parser.get_parsed_content(network_id, instantiate=True)
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise SystemExit(f"ERROR: {ckpt_path} does not fit '{network_id}' of {config_file} ({first})") from None
    logger.info(f"loaded {ckpt_path} into {network_id} of {config_file}")
    return net.to(device).eval()
