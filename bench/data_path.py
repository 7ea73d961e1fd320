"""(b) Data-path throughput against the model step's: the loader must deliver at least 3x what the model consumes.

For each training pipeline (the LA detector's UNet on all slices, the QA ResNet34 on LA slices), times in this
process: the bundle's DataLoader alone (decode + augmentation in the workers, collation), and the training step
alone (forward, backward, optimizer) on batches already in memory. Reported: both rates and their ratio.

    python bench/data_path.py [--datalist D] [--seconds 20] [--batch_size 32] [--num_workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from common import bench_datalist, cycle, throughput, write_report
from monai.data import DataLoader, Dataset
from monai.losses import DiceLoss
from monai.networks.nets import UNet
from monai.transforms import RandAxisFlipd

from bundle.data import SliceCache, load_datalist
from bundle.networks import QANet
from bundle.transforms import RandSliceAffined, slice_pipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datalist")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--spatial_size", type=int, default=128)
    p.add_argument("--max_volumes", type=int, default=10)
    p.add_argument("--output")
    a = p.parse_args()
    torch.manual_seed(0)
    work = tempfile.mkdtemp(prefix="bench_")
    lists = load_datalist(bench_datalist(a.datalist, work))
    augment = [
        RandAxisFlipd(keys=["image", "label"], prob=0.5),
        RandSliceAffined(keys=["image", "label"], prob=0.5, mode=["bilinear", "nearest"]),
    ]
    pipelines = {
        "detector": (
            lists["segmentation"],
            False,
            UNet(2, 1, 1, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2),
            DiceLoss(sigmoid=True, batch=True),
            "label",
        ),
        "qa": (lists["quality"], True, QANet(), torch.nn.BCEWithLogitsLoss(), "target"),
    }
    report = {}
    for name, (entries, only_la, net, loss_fn, target) in pipelines.items():
        entries = [e for e in entries if e.get("label")][: a.max_volumes]
        cache = SliceCache(entries, spatial_size=a.spatial_size, cache_dir=os.path.join(work, "cache"))
        recs = cache.records(cache.has_la if only_la else None)
        for r in recs:
            r["target"] = torch.tensor(
                [float(r.get(k, 3) >= 3) for k in ("nulling", "sharpness", "enhancement", "fibrosis")]
            )
        loader = DataLoader(
            Dataset(recs, slice_pipeline(augment)),
            batch_size=a.batch_size,
            shuffle=True,
            num_workers=a.num_workers,
            drop_last=True,
            persistent_workers=a.num_workers > 0,
        )
        batches = cycle(loader)
        data_rate = throughput(lambda batches=batches: next(batches)["image"].shape[0], a.seconds)
        fixed = [next(batches) for _ in range(4)]
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        i = iter(cycle(fixed))

        def model_step(i=i, opt=opt, net=net, loss_fn=loss_fn, target=target) -> int:
            b = next(i)
            opt.zero_grad(set_to_none=True)
            loss_fn(net(b["image"]), b[target]).backward()
            opt.step()
            return b["image"].shape[0]

        model_rate = throughput(model_step, a.seconds)
        report[name] = {
            "data_slices_per_s": round(data_rate, 1),
            "model_slices_per_s": round(model_rate, 1),
            "ratio": round(data_rate / model_rate, 2),
        }
    report["settings"] = {
        "batch_size": a.batch_size,
        "num_workers": a.num_workers,
        "spatial_size": a.spatial_size,
        "torch_threads": torch.get_num_threads(),
    }
    write_report(report, a.output)


if __name__ == "__main__":
    main()
