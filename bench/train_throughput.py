"""(a) Training throughput (slices/s): the bundle's QA training pipeline against a naive MONAI pipeline.

Naive: MONAI Dataset + DataLoader + dictionary transforms that read the whole volume for every sample, one
RandAffined per augmentation, MONAI's default ResNet34 (stride-1 stem). Bundle: slices cached once
(``SliceCache``), one-interpolation augmentation, the standard stride-2 stem. Both run side by side in this
process, alternating, on the same LA slices; the ratio is the figure (goal: >= 4x on a 2-core CPU).

    python bench/train_throughput.py [--datalist D] [--seconds 60] [--batch_size 32] [--num_workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from common import (
    bench_datalist,
    cycle,
    naive_transform,
    naive_volume_records,
    qa_like_network,
    throughput,
    write_report,
)
from monai.data import DataLoader, Dataset
from monai.transforms import RandAxisFlipd

from bundle.data import SliceCache, load_datalist
from bundle.networks import QANet, prepare_network
from bundle.transforms import RandSliceAffined, slice_pipeline


def trainer_step(net: torch.nn.Module, loader, channels_last: bool = False):
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    batches = cycle(loader)

    def step() -> int:
        b = next(batches)
        x = b["image"]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), b["target"])
        loss.backward()
        opt.step()
        return x.shape[0]

    return step


def bundle_records(cache: SliceCache) -> list[dict]:
    recs = cache.records(cache.has_la)
    for r in recs:
        r["target"] = torch.tensor(
            [float(r.get(s, 3) >= 3) for s in ("nulling", "sharpness", "enhancement", "fibrosis")]
        )
    return recs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datalist")
    p.add_argument("--list", default="quality", help="datalist list to train on")
    p.add_argument("--seconds", type=float, default=60, help="timed seconds per pipeline (split in two rounds)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--spatial_size", type=int, default=128)
    p.add_argument("--max_volumes", type=int, default=20, help="volumes used (the naive loader reads them anyway)")
    p.add_argument("--variants", default="default,channels_last,bf16", help="bundle switches to time too")
    p.add_argument("--output", help="write the results JSON here")
    a = p.parse_args()
    torch.manual_seed(0)
    work = tempfile.mkdtemp(prefix="bench_")
    entries = load_datalist(bench_datalist(a.datalist, work))[a.list][: a.max_volumes]
    entries = [e for e in entries if e.get("label")]

    t0 = time.perf_counter()
    cache = SliceCache(entries, spatial_size=a.spatial_size, cache_dir=os.path.join(work, "cache"))
    cache_seconds = time.perf_counter() - t0
    augment = [
        RandAxisFlipd(keys=["image", "label"], prob=0.5),
        RandSliceAffined(keys=["image", "label"], prob=0.5, mode=["bilinear", "nearest"]),
    ]
    loader_kw = dict(
        batch_size=a.batch_size,
        shuffle=True,
        num_workers=a.num_workers,
        drop_last=True,
        persistent_workers=a.num_workers > 0,
    )
    bundle_loader = DataLoader(Dataset(bundle_records(cache), slice_pipeline(augment)), **loader_kw)
    naive_loader = DataLoader(Dataset(naive_volume_records(entries), naive_transform(a.spatial_size)), **loader_kw)

    steps = {"naive": trainer_step(qa_like_network(1), naive_loader)}
    for v in a.variants.split(","):
        net = prepare_network(
            QANet(), "cpu", channels_last=v == "channels_last", autocast="bf16" if v == "bf16" else "none"
        )
        steps[f"bundle_{v}"] = trainer_step(net, bundle_loader, channels_last=v == "channels_last")
    rates: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(2):  # alternate, so drifts of the machine hit every pipeline alike
        for name, step in steps.items():
            rates[name].append(throughput(step, a.seconds / 2, warmup=2))
    result = {name: sum(r) / len(r) for name, r in rates.items()}
    report = {
        "slices_per_s": {k: round(v, 2) for k, v in result.items()},
        "speedup_vs_naive": {k: round(v / result["naive"], 2) for k, v in result.items() if k != "naive"},
        "cache_build_s": round(cache_seconds, 1),
        "n_slices": int(cache.has_la.sum()),
        "n_volumes": len(entries),
        "batch_size": a.batch_size,
        "num_workers": a.num_workers,
        "spatial_size": a.spatial_size,
        "torch_threads": torch.get_num_threads(),
    }
    write_report(report, a.output)


if __name__ == "__main__":
    main()
