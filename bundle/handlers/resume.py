"""Resumable training: the last finished epoch written atomically under one stable name, and continued from there.

MONAI's ``CheckpointSaver`` names interval checkpoints by epoch and writes them in place; resuming wants one file
whose name a user can type (``<run_dir>/last.pt``) and that an interrupt never leaves half-written.
"""

from __future__ import annotations

import logging
import os

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

from bundle.outputs import atomic_write

__all__ = ["LastCheckpoint", "ResumeTraining"]

logger = logging.getLogger(__name__)


class LastCheckpoint:
    """Write ``save_dict``'s state dicts and the trainer's state to ``<save_dir>/<filename>`` after every epoch.

    The trainer itself is added when the handler is attached (the config cannot name it: the trainer holds its
    handlers). The file is replaced atomically, so after an interrupt it holds the last finished epoch.

    Args:
        save_dir: the run's folder.
        save_dict: ``{name: object with state_dict()}`` (network, optimizer, lr_scheduler).
        filename: the file name.
    """

    def __init__(self, save_dir: str, save_dict: dict, filename: str = "last.pt") -> None:
        if not save_dict:
            raise ValueError("save_dict must name at least one object")
        self.path = os.path.join(save_dir, filename)
        self.save_dict = dict(save_dict)

    def attach(self, engine: Engine) -> None:
        self.save_dict.setdefault("trainer", engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        state = {k: obj.state_dict() for k, obj in self.save_dict.items()}
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        atomic_write(self.path, lambda p: torch.save(state, p))
        engine.state.last_checkpoint = self.path  # named by the interrupt message (MLflowTracker.failed)


class ResumeTraining(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` for a :class:`LastCheckpoint` file: network, optimizer, scheduler and the trainer's
    epoch, so the run continues after its last finished epoch (the trainer is added when attached).

    Args:
        load_path: the ``last.pt`` of the interrupted run.
        load_dict: ``{name: object}`` as saved (without the trainer).
        kwargs: further arguments of ``CheckpointLoader``.

    Raises:
        FileNotFoundError: when ``load_path`` does not exist (before any training).
    """

    def __init__(self, load_path: str, load_dict: dict, **kwargs) -> None:
        if not os.path.isfile(str(load_path)):
            raise FileNotFoundError(f"resume_from {load_path}: not found (a training's <run_dir>/last.pt)")
        super().__init__(load_path=load_path, load_dict=dict(load_dict), map_location="cpu", **kwargs)

    def attach(self, engine: Engine) -> None:
        self.load_dict.setdefault("trainer", engine)
        super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        super().__call__(engine)
        logger.info(f"resumed from {self.load_path}: continuing after epoch {engine.state.epoch}")
