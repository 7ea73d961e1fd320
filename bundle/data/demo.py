"""A deterministic synthetic LGE-MRI demo set: phantoms with an LA-like blob, its mask and quality scores.

The phantoms look like a cropped LGE scan: a dark, noisy background, bright blood pools (left ventricle,
right atrium, aorta), a nulled (dark) myocardium around the ventricle and the left atrium with its appendage.
Each patient gets a clean volume with its LA mask (the ``segmentation`` list) and ``n_variants`` degraded copies
(the ``quality`` list) whose scores follow the degradation applied: poorly nulled myocardium (nulling), blur and
respiratory ghosting (sharpness), faded aorta wall and valve plane (enhancement); the fibrosis score follows the
three with noise, as expert scores do.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
from scipy import ndimage

__all__ = ["make_demo_dataset", "make_phantom"]

logger = logging.getLogger(__name__)

DEMO_VERSION = 1
_SCORE_P = np.array([0.12, 0.22, 0.3, 0.24, 0.12])  # score 1..5 frequencies: about 70% diagnostic (>= 3)


def _ellipsoid(grid: tuple[np.ndarray, ...], center, radii) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def make_phantom(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = (80, 80, 32),
    spacing: tuple[float, float, float] = (1.25, 1.25, 2.5),
) -> tuple[dict, np.ndarray]:
    """Random anatomy of one patient.

    Args:
        rng: random generator (the patient's seed).
        shape: voxels, slice axis last.
        spacing: mm per voxel.

    Returns:
        the anatomy as boolean masks by name, and the LA mask (uint8).
    """
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    grid = np.meshgrid(*axes, indexing="ij")
    j = lambda scale: rng.uniform(-scale, scale)  # noqa: E731 - jitter
    fov_z = shape[2] * spacing[2]
    la_c = (6 + j(4), -8 + j(4), j(0.08 * fov_z))
    la_r = (17 + j(3), 13 + j(2), 0.2 * fov_z + j(0.04 * fov_z))
    la = _ellipsoid(grid, la_c, la_r)
    la |= _ellipsoid(grid, (la_c[0] + la_r[0] * 0.8, la_c[1] + 8, la_c[2] + 4), (7, 5, 6))  # appendage
    lv_c = (-14 + j(3), 16 + j(3), -0.15 * fov_z + j(3))
    lv_r = (15 + j(2), 12 + j(2), 0.3 * fov_z)
    lv = _ellipsoid(grid, lv_c, lv_r)
    myo = _ellipsoid(grid, lv_c, tuple(r + 6 for r in lv_r)) & ~lv
    ra = _ellipsoid(grid, (-22 + j(3), -14 + j(3), 0.1 * fov_z), (13, 11, 0.22 * fov_z)) & ~la
    ao_r = np.hypot(grid[0] - (12 + j(2)), grid[1] - (22 + j(2)))
    aorta, aorta_wall = ao_r <= 8, (ao_r > 8) & (ao_r <= 10.5)
    valve = _ellipsoid(grid, (0, 6, lv_c[2] + lv_r[2] * 0.8), (16, 3, 2.5)) & ~la
    body = _ellipsoid(grid, (0, 0, 0), (0.48 * shape[0] * spacing[0], 0.46 * shape[1] * spacing[1], 10 * fov_z))
    anatomy = dict(body=body, la=la, lv=lv, myo=myo, ra=ra, aorta=aorta, aorta_wall=aorta_wall, valve=valve)
    return anatomy, la.astype(np.uint8)


def _render(anatomy: dict, scores: dict, rng: np.random.Generator, spacing) -> np.ndarray:
    """An 8-bit LGE-like image of ``anatomy`` degraded according to the 1..5 ``scores``."""
    img = np.zeros(anatomy["body"].shape, np.float32)
    img[anatomy["body"]] = 0.18
    blood = 0.72
    for k in ("la", "lv", "ra", "aorta"):
        img[anatomy[k]] = blood
    img[anatomy["myo"]] = 0.04 + 0.13 * (5 - scores["nulling"])  # well nulled myocardium is dark
    enh = 0.35 + 0.16 * (scores["enhancement"] - 1)  # enhanced aorta wall and valves are bright
    img[anatomy["aorta_wall"]] = enh
    img[anatomy["valve"]] = enh
    blur = 0.45 * (5 - scores["sharpness"])
    if blur > 0:
        img = ndimage.gaussian_filter(img, sigma=[blur * 1.25 / s for s in spacing])
        ghost = 0.05 * (5 - scores["sharpness"])
        img = (1 - ghost) * img + ghost * np.roll(img, shift=int(6 + 2 * blur), axis=1)  # respiratory ghost
    sigma = 0.03 + 0.01 * rng.random()
    noisy = np.hypot(img + rng.normal(0, sigma, img.shape), rng.normal(0, sigma, img.shape))  # Rician noise
    return np.clip(noisy * 220, 0, 255).astype(np.uint8)


def _save(array: np.ndarray, spacing, path: str) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), path)


def make_demo_dataset(
    output_dir: str,
    n_patients: int = 28,
    n_variants: int = 2,
    shape: tuple[int, int, int] = (80, 80, 32),
    spacing: tuple[float, float, float] = (1.25, 1.25, 2.5),
    seed: int = 0,
) -> str:
    """Write the synthetic demo set (NIfTI volumes and ``dataset.json``) to ``output_dir``, once.

    An existing set made with the same arguments is reused; the result depends only on the arguments.

    Args:
        output_dir: destination folder.
        n_patients: number of patients (each: one clean volume with mask, ``n_variants`` scored volumes).
        n_variants: degraded, scored copies per patient.
        shape: voxels per volume, slice (axial) axis last.
        spacing: mm per voxel.
        seed: base random seed.

    Returns:
        the path of the datalist JSON.
    """
    params = dict(
        version=DEMO_VERSION,
        n_patients=n_patients,
        n_variants=n_variants,
        shape=list(shape),
        spacing=list(spacing),
        seed=seed,
    )
    datalist_path = os.path.join(output_dir, "dataset.json")
    if os.path.isfile(datalist_path):
        with open(datalist_path) as f:
            if json.load(f).get("demo_params") == params:
                return datalist_path
    for sub in ("images", "labels", "qa"):
        os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
    seg, qual = [], []
    for p in range(n_patients):
        rng = np.random.default_rng([seed, p])
        pid = f"demo{p:03d}"
        anatomy, mask = make_phantom(rng, shape, spacing)
        clean = {k: 5 for k in ("nulling", "sharpness", "enhancement")}
        _save(_render(anatomy, clean, rng, spacing), spacing, os.path.join(output_dir, "images", f"{pid}.nii.gz"))
        _save(mask, spacing, os.path.join(output_dir, "labels", f"{pid}.nii.gz"))
        seg.append({"image": f"images/{pid}.nii.gz", "label": f"labels/{pid}.nii.gz", "patient": pid})
        for q in range(n_variants):
            scores = {k: int(rng.choice(5, p=_SCORE_P)) + 1 for k in ("nulling", "sharpness", "enhancement")}
            fib = int(np.clip(np.round(np.mean(list(scores.values())) + rng.normal(0, 0.6)), 1, 5))
            name = f"qa/{pid}_q{q}.nii.gz"
            _save(_render(anatomy, scores, rng, spacing), spacing, os.path.join(output_dir, name))
            qual.append({"image": name, "label": f"labels/{pid}.nii.gz", "patient": pid, **scores, "fibrosis": fib})
    datalist = {
        "name": "synthetic LGE-MRI phantoms (demo)",
        "spacing_mm": list(spacing),
        "slice_axis": 2,
        "demo_params": params,
        "segmentation": seg,
        "quality": qual,
    }
    with open(datalist_path, "w", encoding="utf-8") as f:
        json.dump(datalist, f, indent=1)
    logger.info(f"wrote the synthetic demo set ({n_patients} patients) to {output_dir}")
    return datalist_path
