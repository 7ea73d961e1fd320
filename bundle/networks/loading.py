"""Build a network from a bundle config and load a checkpoint into it (e.g. the LA detector inside QA workflows)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
from torch import nn

from bundle.errors import ConfigError, WeightsError

__all__ = ["build_network", "fit_state_dict", "load_network", "read_state_dict"]

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
    fit_state_dict(net, read_state_dict(ckpt_path), f"{ckpt_path} does not fit '{network_id}' of {config_file}")
    logger.info(f"loaded {ckpt_path} into {network_id} of {config_file}")
    return net.to(device).eval()


def read_state_dict(path: str, what: str = "checkpoint", map_location: str | torch.device = "cpu") -> dict:
    """The state dict in a checkpoint file: the one reader of every network's weights.

    Accepts a plain state dict, one under a ``model`` or ``state_dict`` key (MONAI's ``CheckpointSaver``, Lightning)
    and DDP's ``module.`` prefixes. Tensors only are loaded (``weights_only``): nothing in the file is executed.

    Args:
        path: the checkpoint file.
        what: how the messages name it (e.g. ``"LA detector checkpoint"``).
        map_location: where the tensors are loaded.

    Returns:
        the state dict, unwrapped.

    Raises:
        WeightsError: one line, when the file is unreadable or holds no state dict.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise WeightsError(f"{what} {path} is unreadable: {_load_problem(path, e)}") from None
    for key in ("model", "state_dict"):
        wrapped = isinstance(state, dict) and isinstance(state.get(key), dict)
        if wrapped and not any(torch.is_tensor(v) for v in state.values()):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"{what} {path} holds a {type(state).__name__}, not a state dict")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def fit_state_dict(network: nn.Module, state: dict, message: str, remedy: str = "") -> None:
    """Load ``state`` into ``network`` strictly; when it does not fit, one line saying how.

    Args:
        network: the network to fill.
        state: its state dict (:func:`read_state_dict`).
        message: the start of the error line (names the file and the network).
        remedy: appended to the error line after a colon (what to do).

    Raises:
        WeightsError: ``<message> (<missing / unexpected keys or the first tensor of another shape>)[: <remedy>]``.
    """
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        own = network.state_dict()
        expected = own.keys()
        missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
        detail = str(e).splitlines()[-1].strip()[:120]
        shapes = [k for k in expected & state.keys() if tuple(own[k].shape) != tuple(getattr(state[k], "shape", ()))]
        if shapes:
            k = sorted(shapes)[0]
            detail = (
                f"{len(shapes)} tensors of other shapes, e.g. {k}: {tuple(state[k].shape)} in the file, "
                f"{tuple(own[k].shape)} in the network"
            )
        if missing or unexpected:
            detail = (
                f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected "
                f"(e.g. {unexpected[:2]})"
            )
        raise WeightsError(f"{message} ({detail})" + (f": {remedy}" if remedy else "")) from None


def _load_problem(path: str, e: Exception) -> str:
    """What is wrong with a file ``torch.load`` refused, in a few words (PyTorch's own message runs to paragraphs)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if not magic:
        return "an empty file"
    if magic[:2] not in (b"PK", b"\x80\x02"):  # torch.save writes a zip archive (or, legacy, a protocol-2 pickle)
        return "not a PyTorch checkpoint (neither the zip archive nor the pickle torch.save writes)"
    text = str(e)
    if "Weights only load failed" in text:
        return (
            "it holds Python objects, not only tensors (a whole pickled model?); save the weights with "
            "torch.save(model.state_dict(), path)"
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first[:160]}" if first else type(e).__name__
