"""Stage 1's cost: two detector checkpoints side by side on the same volumes, as inference runs them.

    python bench/detector_cost.py --baseline runs/detector_0121.pt --candidate models/detector.pt [--repeats 2]

For each volume (la2018's first ``--volumes`` images, and each of them centred in a field of view ``--widen`` times
as wide, zeros around it, as a whole-chest export is wider than la2018's crops), ``segment_la`` of both detectors,
alternating, ``--repeats`` times each, in this process: the plan's inferer, every slice, the rule. Reported: the
median seconds per volume of each and their ratio (candidate over baseline), per field of view. Peak memory is
``bench/memory_assess.py``'s job.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch
from common import LA2018, write_report

from bundle.inference import load_detector, load_volume, segment_la


def widened(volume, factor: int):
    """``volume`` centred in a field of view ``factor`` times as wide in-plane (zeros around it), affine shifted."""
    from monai.data import MetaTensor

    if factor == 1:
        return volume
    c, x, y, z = volume.shape
    big = torch.zeros((c, x * factor, y * factor, z), dtype=volume.dtype)
    ox, oy = (x * factor - x) // 2, (y * factor - y) // 2
    big[:, ox : ox + x, oy : oy + y] = volume.as_tensor()
    affine = volume.affine.clone()
    affine[:3, 3] -= affine[:3, 0] * ox + affine[:3, 1] * oy
    return MetaTensor(big, affine=affine)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", required=True, help="detector checkpoint with its plan beside it")
    p.add_argument("--candidate", required=True, help="detector checkpoint with its plan beside it")
    p.add_argument("--volumes", type=int, default=2, help="la2018 images to run on")
    p.add_argument("--widen", type=int, default=2, help="also each volume in a field of view this many times wider")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--output", default=None)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    entries = json.load(open(LA2018, encoding="utf-8"))["segmentation"][: args.volumes]
    images = [os.path.join(os.path.dirname(LA2018), e["image"]) for e in entries]
    detectors = {"baseline": load_detector(args.baseline), "candidate": load_detector(args.candidate)}
    result = {"baseline": args.baseline, "candidate": args.candidate, "threads": torch.get_num_threads(), "runs": []}
    for factor in sorted({1, args.widen}):
        times = {k: [] for k in detectors}
        for path in images:
            volume = widened(load_volume(path), factor)
            for _ in range(args.repeats):
                for name, (network, plan) in detectors.items():
                    t0 = time.perf_counter()
                    segment_la(network, plan, volume)
                    times[name].append(time.perf_counter() - t0)
        row = {"field_of_view": f"{factor}x", "shape": list(volume.shape[1:])}
        row.update({f"{k}_s": round(statistics.median(v), 2) for k, v in times.items()})
        row["ratio"] = round(float(np.median(times["candidate"]) / np.median(times["baseline"])), 2)
        result["runs"].append(row)
    write_report(result, args.output)


if __name__ == "__main__":
    main()
