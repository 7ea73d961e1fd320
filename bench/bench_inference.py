"""Inference of one 88-slice DICOM series end to end, against the pure forward passes of the two networks.

    python bench/bench_inference.py [--input <DICOM folder>] [--repeats 3] [--qa_ckpt <qa.pt> --qa_spatial_size 64]

In one process, alternating, ``--repeats`` times each:
- end to end: the bundle's inference workflow on the input (discovery, reading and decoding the DICOM files,
  normalisation, stage 1 on every slice, slice selection, stage 2 with its flips, HiResCAM, the mask, the HTML page,
  the CSV and JSON reports), timed as ``run()`` (networks already loaded, as for every scan after the first) and as
  ``initialize() + run() + finalize()`` (config parsing, network construction and weight loading included);
- the floor: the same networks' forward passes alone on the same slices in the same batches: the detector on every
  slice, the QA network on the selected slices under each flip.
Then, in a fresh process, the peak resident memory of one end-to-end run (and of the imports alone).

The input defaults to la2018's messy export (88 RLE slices, a localizer and a text file beside them); without it a
synthetic 88-slice series is written. The detector is the shipped models/detector.pt (random weights when it is absent:
the LA selection, so the QA workload, is then arbitrary); the QA network is the inference config's (the bundle's QANet,
resnet34 encoder) with the weights of ``--qa_ckpt`` (random weights when not given; the cost is the same).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
MESSY = os.path.join(ROOT, "..", "shared", "data", "la2018", "dicom", "1MHBF3G6DCPWHSKG7XCP_q1_messy")
CONFIG = [os.path.join(ROOT, "configs", "common.yaml"), os.path.join(ROOT, "configs", "inference.yaml")]


def synthetic_series(folder: str) -> str:
    import numpy as np

    from tests.dicom_helpers import write_series

    rng = np.random.default_rng(0)
    vol = rng.integers(20, 200, (199, 143, 88)).astype(np.uint16)
    vol[60:140, 40:100, 20:70] += 400
    write_series(folder, vol, spacing=(0.625, 0.625, 0.625), rle=True)
    return folder


def workflow(input_path: str, out: str, qa_ckpt: str, detector: str | None, qa_size: int | None = None):
    from monai.bundle import ConfigWorkflow

    kw = {"input": input_path, "output_dir": out, "qa_ckpt": qa_ckpt, "bundle_root": ROOT}
    if qa_size:
        kw["qa_spatial_size"] = qa_size
    if detector:
        kw["ckpt_path"] = detector
    return ConfigWorkflow(config_file=CONFIG, workflow_type="infer", **kw)


def make_qa_checkpoint(folder: str) -> str:
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(CONFIG)
    parser["bundle_root"] = ROOT
    torch.manual_seed(0)
    path = os.path.join(folder, "qa_random.pt")
    torch.save(parser.get_parsed_content("qa_network_def").state_dict(), path)
    return path


def rss_mb() -> float:
    """Peak resident memory of this process in MiB: VmHWM, which (unlike ru_maxrss) restarts at exec."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_memory(args) -> None:
    """One end-to-end run in this (fresh) process; prints peak RSS after the imports and after the run."""
    import torch  # noqa: F401
    from monai.bundle import ConfigWorkflow  # noqa: F401

    import bundle.inference  # noqa: F401

    after_imports = rss_mb()
    wf = workflow(args.input, args.out, args.qa_ckpt, args.detector, args.qa_spatial_size)
    wf.initialize()
    wf.run()
    wf.finalize()
    print(json.dumps({"rss_imports_mb": after_imports, "rss_peak_mb": rss_mb()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=None, help="a DICOM folder holding one 88-slice series")
    p.add_argument("--detector", default=os.path.join(ROOT, "models", "detector.pt"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child_memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--qa_ckpt", default=None, help="trained QA network weights (default: random weights)")
    p.add_argument("--qa_spatial_size", type=int, default=None, help="the QA network's slice size (default: config)")
    args = p.parse_args()
    if args.child_memory:
        return child_memory(args)

    import torch

    from bundle.transforms import ExtractSlices

    tmp = tempfile.mkdtemp(prefix="bench_inference_")
    input_path = args.input or (MESSY if os.path.isdir(MESSY) else synthetic_series(os.path.join(tmp, "series")))
    detector = args.detector if args.detector and os.path.isfile(args.detector) else None
    if detector is None:  # random detector weights, saved so the workflow loads them like trained ones
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(CONFIG)
        detector = os.path.join(tmp, "detector_random.pt")
        torch.save(parser.get_parsed_content("network_def").state_dict(), detector)
        print("note: no trained detector: random weights, the LA selection is arbitrary")
    qa_ckpt = args.qa_ckpt or make_qa_checkpoint(tmp)

    e2e, runs, floors, floor_det, floor_qa = [], [], [], [], []
    n_slices = n_la = None
    for r in range(args.repeats):
        out = os.path.join(tmp, f"out{r}")
        t0 = time.perf_counter()
        wf = workflow(input_path, out, qa_ckpt, detector, args.qa_spatial_size)
        wf.initialize()
        t1 = time.perf_counter()
        wf.run()
        t2 = time.perf_counter()
        try:
            wf.finalize()
        except SystemExit as e:
            raise SystemExit(f"nothing assessed: {e}") from None
        t3 = time.perf_counter()
        e2e.append(t3 - t0)
        runs.append(t2 - t1)
        report = json.load(open(os.path.join(out, "qa_report.json")))
        scan = next(s for s in report["scans"] if s["status"] in ("ok", "no_left_atrium"))
        n_slices, n_la = scan["n_slices"], scan["n_la_slices"]
        selected = [s["index"] for s in scan["slices"] if s["selected"]]

        # the floor: the same networks, the same slices, the same batches, forward passes only
        parser = wf.parser
        net, stage = parser.get_parsed_content("network"), parser.get_parsed_content("qa_stage")
        inferer = parser.get_parsed_content("inferer")
        vol = parser.get_parsed_content("dataset")[0]["image"]
        slices = inferer.slicer(vol).to(parser.get_parsed_content("device"))
        qa_slices = slices
        if stage.spatial_size and tuple(slices.shape[2:]) != stage.spatial_size:  # QA at its own slice size
            qa_slices = ExtractSlices(spatial_size=stage.spatial_size)(vol).to(slices.device)
        chosen = qa_slices[selected]
        views = torch.cat([chosen.flip(f) if f else chosen for f in stage.flips]) if selected else None
        bs = inferer.batch_size
        with torch.no_grad():
            f0 = time.perf_counter()
            for i in range(0, len(slices), bs):
                net(slices[i : i + bs])
            f1 = time.perf_counter()
            if views is not None:
                for i in range(0, len(views), stage.batch_size):
                    stage.model.net(views[i : i + stage.batch_size])
            f2 = time.perf_counter()
        floor_det.append(f1 - f0)
        floor_qa.append(f2 - f1)
        floors.append(f2 - f0)
        print(
            f"repeat {r}: end-to-end {e2e[-1]:.2f} s (run {runs[-1]:.2f} s); floor {floors[-1]:.2f} s "
            f"(detector {f1 - f0:.2f} s, QA {f2 - f1:.2f} s)",
            flush=True,
        )

    mem_out = os.path.join(tmp, "out_mem")
    res = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child_memory",
            "--input",
            input_path,
            "--out",
            mem_out,
            "--qa_ckpt",
            qa_ckpt,
            "--detector",
            detector,
            *(["--qa_spatial_size", str(args.qa_spatial_size)] if args.qa_spatial_size else []),
        ],
        capture_output=True,
        text=True,
    )
    mem = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else {}
    med = statistics.median
    summary = {
        "input": os.path.abspath(input_path),
        "n_slices": n_slices,
        "n_la_slices": n_la,
        "qa_views": len(stage.flips) * (n_la or 0),
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "floor_s": med(floors),
        "floor_detector_s": med(floor_det),
        "floor_qa_s": med(floor_qa),
        "run_s": med(runs),
        "end_to_end_s": med(e2e),
        "run_over_floor": med(runs) / med(floors),
        "end_to_end_over_floor": med(e2e) / med(floors),
        "peak_rss_mb": mem.get("rss_peak_mb"),
        "rss_after_imports_mb": mem.get("rss_imports_mb"),
        "detector": detector,
        "qa_ckpt": qa_ckpt,
        "qa_network": type(stage.model.net).__name__,
        "qa_spatial_size": stage.spatial_size,
        "device": str(parser.get_parsed_content("device")),
    }
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in summary.items()}, indent=1))
    s = summary
    print(
        f"one {n_slices}-slice series: {s['run_s']:.2f} s per scan (run), {s['end_to_end_s']:.2f} s with setup; "
        f"floor {s['floor_s']:.2f} s -> {s['run_over_floor']:.2f}x ({s['end_to_end_over_floor']:.2f}x with setup; "
        f"goal <= 1.5x); peak memory {s['peak_rss_mb'] or float('nan'):.0f} MiB (goal < 2048)"
    )
    if res.returncode != 0:
        print("memory run failed:", res.stderr[-2000:])


if __name__ == "__main__":
    main()
