"""Shared pieces of the benchmarks: data to run on, timing, the naive MONAI baseline pipeline."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

LA2018 = os.path.abspath(os.path.join(ROOT, "..", "shared", "data", "la2018", "dataset.json"))


def bench_datalist(datalist: str | None, workdir: str) -> str:
    """The datalist to benchmark on: the given one, la2018 where present, else the synthetic demo set."""
    if datalist:
        return datalist
    if os.path.isfile(LA2018):
        return LA2018
    from bundle.data import make_demo_dataset

    return make_demo_dataset(os.path.join(workdir, "demo"))


def write_report(result: dict, output: str | None = None) -> None:
    """Print a benchmark's results as JSON and, with ``output``, write them to that file too."""
    print(json.dumps(result, indent=1))
    if output:
        with open(output, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


def rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def throughput(step: Callable[[], int], seconds: float, warmup: int = 2) -> float:
    """Items per second of ``step`` (which returns how many items it processed), after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += step()
    return n / (time.perf_counter() - t0)


def cycle(loader: Iterable):
    """Endless iteration over a data loader."""
    while True:
        yield from loader


def naive_volume_records(entries: list[dict], only_la: bool = True) -> list[dict]:
    """One record per slice that points at the volume file (what a naive pipeline loads per sample)."""
    import nibabel as nib

    out = []
    for e in entries:
        label = np.asarray(nib.load(e["label"]).dataobj) if e.get("label") else None
        n = nib.load(e["image"]).shape[2]
        for k in range(n):
            if only_la and label is not None and not label[..., k].any():
                continue
            out.append(
                {
                    "image": e["image"],
                    "label": e["label"],
                    "slice": k,
                    "target": torch.tensor(
                        [float(e.get(s, 3) >= 3) for s in ("nulling", "sharpness", "enhancement", "fibrosis")]
                    ),
                }
            )
    return out


def naive_transform(spatial_size: int = 128, prob: float = 0.5):
    """The naive MONAI pipeline: read the whole volume for each sample, pick its slice, one RandAffined per
    augmentation (each interpolates), as a first MONAI tutorial-style attempt would."""
    from monai.transforms import (
        Compose,
        EnsureTyped,
        LoadImaged,
        MapTransform,
        RandAffined,
        RandAxisFlipd,
        Resized,
        ScaleIntensityRangePercentilesd,
    )

    class SelectSliced(MapTransform):
        def __call__(self, d):
            d = dict(d)
            for k in self.key_iterator(d):
                d[k] = d[k][..., d["slice"]]
            return d

    keys = ["image", "label"]
    return Compose(
        [
            LoadImaged(keys=keys, ensure_channel_first=True, image_only=True),
            ScaleIntensityRangePercentilesd(keys="image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True),
            SelectSliced(keys=keys),
            Resized(keys=keys, spatial_size=(spatial_size, spatial_size), mode=["bilinear", "nearest"]),
            RandAxisFlipd(keys=keys, prob=prob),
            RandAffined(keys=keys, prob=prob, rotate_range=0.26, mode=["bilinear", "nearest"]),
            RandAffined(keys=keys, prob=prob, shear_range=(0.1, 0.1), mode=["bilinear", "nearest"]),
            RandAffined(keys=keys, prob=prob, translate_range=(10, 10), mode=["bilinear", "nearest"]),
            RandAffined(keys=keys, prob=prob, scale_range=(0.1, 0.1), mode=["bilinear", "nearest"]),
            EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False),
        ]
    )


def qa_like_network(stem_stride: int) -> torch.nn.Module:
    """MONAI's ResNet34 with 4 outputs, its default stem (stride 1: the naive baseline) or the
    standard stride-2 stem the bundle uses."""
    from monai.networks.nets import resnet34

    return resnet34(spatial_dims=2, n_input_channels=1, num_classes=4, conv1_t_stride=stem_stride)
