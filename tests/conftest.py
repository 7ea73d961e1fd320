"""Shared fixtures: small generated datasets, so the tests never need ../shared data."""

from __future__ import annotations

import json
import os
import sys

import nibabel as nib
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_QA = {  # the QA workflows (configs/qa_*.yaml) with a small encoder and image size: one epoch in seconds on a CPU
    "spatial_size": 32,
    "batch_size": 16,
    "max_epochs": 1,
    "num_workers": 0,
    "encoder_layers": [1, 1, 1, 1],
    "encoder_widths": [8, 16, 32, 64],
    "head_channels": 8,
    "qa_channels": 4,
    "network_def#decoder_channels": [32, 16, 8, 8, 4],
    "pretrain_epochs": 1,
    "pretrain_batch_size": 16,
    "projection_dim": 16,
}
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

LA2018 = os.path.abspath(os.path.join(ROOT, "..", "shared", "data", "la2018"))


def cli_args(overrides: dict) -> list[str]:
    """``--name value`` pairs for ``monai.bundle run`` and the scripts (lists as JSON)."""
    return [a for k, v in overrides.items() for a in (f"--{k}", json.dumps(v) if isinstance(v, list) else str(v))]


def bundle_cmd(workflow: str, configs: str | list[str], *args: str) -> list[str]:
    """The argv of ``python -m monai.bundle run <workflow>`` on ``configs`` (a list of files, passed as JSON, or the
    ``--config_file`` string itself), followed by ``args``."""
    files = configs if isinstance(configs, str) else json.dumps(list(configs))
    return [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", files, *args]


def write_nifti(path: str, array: np.ndarray, affine: np.ndarray | None = None) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> str:
    """A small synthetic demo set (8 patients, 32x32x8 voxels): returns its datalist path."""
    from bundle.data.demo import make_demo_dataset

    return make_demo_dataset(
        str(tmp_path_factory.mktemp("demo")), n_patients=8, shape=(32, 32, 8), spacing=(2.5, 2.5, 5.0)
    )


@pytest.fixture
def toy_dataset(tmp_path):
    """A folder with two patients' images and masks and a datalist writer for variations of its entries."""
    rng = np.random.default_rng(0)
    for p in ("a", "b"):
        img = rng.integers(0, 200, (16, 12, 6)).astype(np.uint8)
        lab = np.zeros((16, 12, 6), np.uint8)
        lab[4:10, 3:8, 2:4] = 1
        write_nifti(str(tmp_path / "images" / f"{p}.nii.gz"), img)
        write_nifti(str(tmp_path / "labels" / f"{p}.nii.gz"), lab)

    def make(seg=None, quality=None, name="dataset.json") -> str:
        seg = (
            seg
            if seg is not None
            else [{"image": f"images/{p}.nii.gz", "label": f"labels/{p}.nii.gz", "patient": p} for p in ("a", "b")]
        )
        quality = (
            quality
            if quality is not None
            else [
                {
                    "image": f"images/{p}.nii.gz",
                    "patient": p,
                    "nulling": 3,
                    "sharpness": 4,
                    "enhancement": 2,
                    "fibrosis": 5,
                }
                for p in ("a", "b")
            ]
        )
        path = tmp_path / name
        path.write_text(json.dumps({"segmentation": seg, "quality": quality}))
        return str(path)

    make.root = tmp_path
    return make


def write_known_detector(
    folder, level: float, name: str = "model.pt", spatial_size: int = 16, la_bounds: dict | None = None, **post
) -> str:
    """A one-logit-per-pixel "detector" whose answer is known (logit = 20 * (intensity - level)), with its plan.

    The plan says: slices resized to ``spatial_size``, plain 2D, threshold 0.5, no largest-component filter and no
    minimum area unless ``post`` says otherwise. Returns the checkpoint's path.
    """
    import torch

    from bundle.networks.plan import write_plan

    conv = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(20.0)
        conv.bias.fill_(-20.0 * level)
    os.makedirs(str(folder), exist_ok=True)
    ckpt = os.path.join(str(folder), name)
    torch.save(conv.state_dict(), ckpt)
    write_plan(
        ckpt,
        {
            "kind": "detector",
            "network_def": {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 1, "kernel_size": 1},
            "preprocessing": {
                "spatial_size": spatial_size,
                "pixel_mm": None,
                "context_slices": 0,
                "context_mm": None,
                "slice_axis": None,
            },
            "postprocessing": {"la_threshold": 0.5, "keep_largest": False, "min_la_area_mm2": 0.0, **post},
            "la_bounds": la_bounds,
        },
    )
    return ckpt
