"""(c) Training memory per cached slice: bytes per slice of the slice cache in each storage, and the resident
memory the process gains while building and holding it, side by side.

    python bench/cache_memory.py [--datalist D] [--list segmentation]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from common import ROOT, bench_datalist, write_report

CHILD = """
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
from bundle.data import SliceCache, load_datalist
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
entries = load_datalist({datalist!r})[{list!r}]
before = rss()
t0 = time.perf_counter()
c = SliceCache(entries, spatial_size={size}, cache_dir={cache!r}, dtype={dtype!r}, mmap={mmap})
build = time.perf_counter() - t0
touched = float(c.images[:, 0, ::8, ::8].astype('float32').sum())  # read every slice once, as an epoch does
print(json.dumps(dict(n_slices=len(c), bytes_per_slice=c.nbytes / len(c), rss_gain_per_slice=(rss() - before) / len(c),
                      seconds=build)))
"""


def run(datalist: str, list_name: str, cache: str, dtype: str, mmap: bool, size: int) -> dict:
    code = CHILD.format(root=ROOT, datalist=datalist, list=list_name, cache=cache, dtype=dtype, mmap=mmap, size=size)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datalist")
    p.add_argument("--list", default="segmentation")
    p.add_argument("--spatial_size", type=int, default=128)
    p.add_argument("--output")
    a = p.parse_args()
    work = tempfile.mkdtemp(prefix="bench_")
    datalist = bench_datalist(a.datalist, work)
    cache = os.path.join(work, "cache")
    run(datalist, a.list, cache, "float16", False, a.spatial_size)  # fill the per-volume cache once
    report = {}
    for dtype, mmap in (("float16", False), ("uint8", False), ("uint8", True)):
        run(datalist, a.list, cache, dtype, mmap, a.spatial_size)  # first: builds the set file where mmap
        r = run(datalist, a.list, cache, dtype, mmap, a.spatial_size)  # measured: a later run, as training sees it
        report[f"{dtype}{'_mmap' if mmap else ''}"] = {
            "n_slices": r["n_slices"],
            "KiB_per_slice": round(r["bytes_per_slice"] / 1024, 1),
            "rss_KiB_per_slice": round(r["rss_gain_per_slice"] / 1024, 1),
            "open_seconds": round(r["seconds"], 2),
        }
    base = report[
        "float16"
    ]  # the default storage, measured side by side; float32 image + mask: what a plain cache holds
    for r in report.values():
        r["rss_vs_float16"] = round(r["rss_KiB_per_slice"] / base["rss_KiB_per_slice"], 2)
    report["float32_reference_KiB_per_slice"] = round(a.spatial_size**2 * (4 + 4) / 1024, 1)
    write_report(report, a.output)


if __name__ == "__main__":
    main()
