"""Retraining from MONAI Label: the bundle's own training workflow, run by the bundle runner, tracked in MLflow."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.train import TrainTask

from .datalist import datalist_from_pairs, write_datalist

logger = logging.getLogger(__name__)

__all__ = ["BundleRunnerTrain"]

APP_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


class BundleRunnerTrain(TrainTask):
    """Train one of the bundle's networks on the datastore's labelled studies, as the command line would.

    MONAI Label's ``BundleTrainTask`` does not fit this bundle: it reads a single ``configs/train.json``, overrides
    ``train#dataset#data`` with volume records (our workflows read 2D slices through the validated, patient-split
    ``data`` component) and runs ``monai.bundle.run`` inside the task process on one device. This task instead
    writes the datastore's final labels as a datalist (docs/data.md) and launches, in a subprocess::

        python -m monai.bundle run training --config_file "[<config_files>]" --meta_file configs/metadata.json
            --logging_file configs/logging.conf --bundle_root <root> --datalist <job>/datalist.json
            --max_epochs N --test_size T --val_fraction V --run_name <run> --tracking mlflow [--tracking_uri U]
            [--experiment_name E] [--pretrained_ckpt <job>/pretrained.pt with apps/monailabel/configs/finetune.yaml]

    so the run is the bundle's own: its validation, split, checkpointing (``models/<ckpt_name>``, the previous one
    kept as ``<stem>.<time>.pt``), and its MLflow run (by default in ``<bundle_root>/runs/mlruns.db``). The LA task
    reloads the new weights on its next request. A failed run fails the MONAI Label task with its last output lines.

    Args:
        bundle_root: the bundle folder (``configs/``, ``models/``).
        code_root: the folder holding the ``bundle`` package (put on the subprocess's PYTHONPATH).
        config_files: the workflow's config files in order (common.yaml, train.yaml, overlays).
        ckpt_name: the checkpoint the workflow writes in ``<bundle_root>/models``.
        description: shown by MONAI Label.
        patient_pattern: regular expression whose first group is the patient id in an image id (None: image id).
        max_epochs: default epochs of a retraining request.
    """

    def __init__(
        self,
        bundle_root: str,
        code_root: str,
        config_files: Sequence[str],
        ckpt_name: str = "model.pt",
        description: str = "Train the LA detector on the datastore's labelled studies (bundle runner, MLflow)",
        patient_pattern: str | None = None,
        max_epochs: int = 40,
    ) -> None:
        super().__init__(description)
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be positive, got {max_epochs}")
        self.bundle_root = os.path.abspath(bundle_root)
        self.code_root = os.path.abspath(code_root)
        self.config_files = [os.path.abspath(f) for f in config_files]
        self.ckpt_name = ckpt_name
        self.patient_pattern = patient_pattern
        self.max_epochs = max_epochs
        missing = [f for f in self.config_files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"train task: config files not found: {missing}")
        self._last: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        return {
            "max_epochs": self.max_epochs,  # epochs of the run (the workflow keeps the best checkpoint)
            "val_split": 0.2,  # share of the patients used for validation
            "test_size": 0,  # patients held out for test (a count, or a fraction below 1)
            "pretrained": True,  # start from the current models/<ckpt_name>
            "tracking": ["mlflow"],  # the bundle always logs to MLflow; kept as MONAI Label's switch
            "tracking_uri": "",  # empty: the bundle's store, <bundle_root>/runs/mlruns.db
            "tracking_experiment_name": "",  # empty: the bundle's experiment (la_lge_qa)
            "device": "",  # empty: cuda when available, else cpu
        }

    def stats(self) -> dict[str, Any]:
        return dict(self._last)

    def _command(self, request: dict, datalist: str, run_name: str, job_dir: str) -> list[str]:
        val_split = float(request.get("val_split", 0.2))
        files = list(self.config_files)
        extra: list[str] = []
        ckpt = os.path.join(self.bundle_root, "models", self.ckpt_name)
        if _true(request.get("pretrained", True)) and os.path.isfile(ckpt):
            start = shutil.copy2(ckpt, os.path.join(job_dir, "pretrained.pt"))  # the run moves models/<ckpt> aside
            files.append(os.path.join(APP_CONFIGS, "finetune.yaml"))
            extra += ["--pretrained_ckpt", start]
        tracking = request.get("tracking", "mlflow")
        tracking = tracking[0] if isinstance(tracking, list) and tracking else tracking
        if tracking and str(tracking).lower() not in ("mlflow", "none"):
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, f"tracking must be mlflow, got {tracking!r}")
        if request.get("tracking_uri"):
            extra += ["--tracking_uri", str(request["tracking_uri"])]
        if request.get("tracking_experiment_name"):
            extra += ["--experiment_name", str(request["tracking_experiment_name"])]
        device = request.get("device")
        device = device[0] if isinstance(device, list) and device else device
        if device:  # as MONAI Label does: cuda falls back to the cpu where there is none
            device = str(device) if str(device) == "cpu" or torch.cuda.is_available() else "cpu"
            extra += ["--device", f"$torch.device('{device}')"]
        configs = os.path.join(self.bundle_root, "configs")
        return [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            json.dumps(files),
            "--meta_file",
            os.path.join(configs, "metadata.json"),
            "--logging_file",
            os.path.join(configs, "logging.conf"),
            "--bundle_root",
            self.bundle_root,
            "--datalist",
            datalist,
            "--max_epochs",
            str(int(request.get("max_epochs", self.max_epochs))),
            "--test_size",
            str(request.get("test_size", 0)),
            "--val_fraction",
            str(val_split if val_split > 0 else 0.0),
            "--run_name",
            run_name,
            "--tracking",
            "mlflow",
            *extra,
        ]

    def __call__(self, request: dict, datastore: Datastore) -> dict[str, Any]:
        pairs = datastore.datalist()
        if len(pairs) < 2:
            raise MONAILabelException(
                MONAILabelError.INVALID_INPUT,
                f"training needs at least 2 studies with a final label; the datastore has {len(pairs)}",
            )
        model = request.get("model", "train")
        run_name = request.get("tracking_run_name") or f"{model}_{time.strftime('%Y%m%d_%H%M%S')}"
        job_dir = os.path.join(self.bundle_root, "runs", "monailabel", run_name)
        if os.path.exists(job_dir):
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, f"run {run_name} exists ({job_dir}): pick another")
        os.makedirs(job_dir)
        try:
            datalist = write_datalist(
                datalist_from_pairs(pairs, self.patient_pattern), os.path.join(job_dir, "datalist.json")
            )
        except ValueError as e:
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, str(e)) from e
        cmd = self._command(request, datalist, run_name, job_dir)
        path = os.pathsep.join(p for p in (self.code_root, os.environ.get("PYTHONPATH")) if p)
        logger.info(f"train: {len(pairs)} labelled studies; running {' '.join(cmd)}")
        start = time.time()
        tail: list[str] = []
        env = {**os.environ, "PYTHONPATH": path}
        with subprocess.Popen(
            cmd, cwd=self.bundle_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            for line in proc.stdout:  # type: ignore[union-attr]
                line = line.rstrip()
                logger.info(line)
                tail = (tail + [line])[-20:]
        ckpt = os.path.join(self.bundle_root, "models", self.ckpt_name)
        self._last = {
            "run_name": run_name,
            "returncode": proc.returncode,
            "seconds": round(time.time() - start, 1),
            "studies": len(pairs),
            "checkpoint": ckpt,
        }
        if proc.returncode != 0:
            detail = f"training failed ({proc.returncode}): " + " | ".join(tail[-5:])
            raise MONAILabelException(MONAILabelError.APP_TRAIN_FAILED, detail)
        logger.info(f"train: done in {self._last['seconds']} s; run {run_name}")
        return dict(self._last)


def _true(value: Any) -> bool:
    """MONAI Label requests carry booleans as bools or strings."""
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")
