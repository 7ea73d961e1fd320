"""Build a network from a bundle config and load a checkpoint into it (e.g. the LA detector inside QA workflows)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
from torch import nn

from bundle.errors import ConfigError, WeightsError

__all__ = ["build_network", "load_network"]

logger = logging.getLogger(__name__)


def build_network(
    config_file: str | Sequence[str], network_id: str = "network_def", root: str | None = None
) -> nn.Module:
    """Instantiate ``network_id`` of a bundle config (a workflow's files, merged in order), without weights.

    The inference config builds the QA network this way from the QA workflow's own files
    (``configs/common.yaml`` + ``configs/qa_baseline.yaml``), so its definition lives in one place.

    Args:
        config_file: config file(s) holding ``network_id``; relative paths are taken from ``root``.
        network_id: id of the network definition in the config.
        root: folder of relative ``config_file`` paths (the bundle root); None: the working directory.

    Returns:
        the network, as the config defines it (random weights unless the config loads some).

    Raises:
        ConfigError: one line naming the files, when one is missing or has no ``network_id``.
    """
    from monai.bundle import ConfigParser

    files = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
    files = [os.path.join(root, f) if root and not os.path.isabs(f) else f for f in map(str, files)]
    missing = [f for f in files if not os.path.isfile(f)]
    if not files or missing:
        raise ConfigError(f"no config file {missing or files} to build '{network_id}' from")
    parser = ConfigParser()
    parser.read_config(files)
    if network_id not in parser:
        raise ConfigError(f"{files}: no '{network_id}' to build the network from")
    return parser.get_parsed_content(network_id, instantiate=True)


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
        WeightsError: one line naming the file, when the checkpoint is missing or does not fit.
    """
    if not os.path.isfile(ckpt_path):
        raise WeightsError(f"no checkpoint at {ckpt_path}" + (f"; {hint}" if hint else ""))
    net = build_network(config_file, network_id)
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise WeightsError(f"{ckpt_path} does not fit '{network_id}' of {config_file} ({first})") from None
    logger.info(f"loaded {ckpt_path} into {network_id} of {config_file}")
    return net.to(device).eval()
