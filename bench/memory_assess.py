"""Peak memory of scripts/assess.py: one whole-chest study against many, and against the imports alone.

    python bench/memory_assess.py [--studies 50] [--shape 576 576 88] [--output runs/bench/memory_assess.json]

Writes ``--studies`` synthetic LGE-like volumes of ``--shape`` (0.625 x 0.625 x 1.25 mm, a bright box in noise, each
with another seed) and runs, each in a fresh process with the shipped weights (models/detector.pt, models/qa.pt):
- the imports and network loading alone (the same command on a 12-slice volume, which is refused after loading);
- one study;
- all ``--studies`` studies in one run.
It reports each run's peak resident memory (``ru_maxrss`` of the child) and the ratios that the goals are stated in:
``many / one`` (flat memory: <= 1.10) and ``one - imports`` (what a study itself costs). Also the per-study time of
the many-study run, from its report log.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_studies(folder: str, n: int, shape: tuple[int, int, int]) -> list[str]:
    import nibabel as nib
    import numpy as np

    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        vol = rng.integers(50, 150, shape).astype(np.int16)
        c = [s // 2 + int(rng.integers(-20, 20)) for s in shape[:2]] + [shape[2] // 2]
        vol[c[0] - 40 : c[0] + 40, c[1] - 35 : c[1] + 35, max(0, c[2] - 20) : c[2] + 20] = 900
        path = os.path.join(folder, f"study{i:03d}", "lge.nii.gz")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        nib.save(nib.Nifti1Image(vol, np.diag([0.625, 0.625, 1.25, 1.0])), path)
        paths.append(path)
    return paths


def peak_of(args: list[str]) -> tuple[float, float, str]:
    """Peak RSS (MB) and wall time (s) of ``scripts/assess.py args`` in a child process, and its log."""
    code = (
        "import resource, runpy, sys\n"
        "sys.argv = ['assess.py'] + sys.argv[1:]\n"
        "try:\n"
        f"    runpy.run_path({os.path.join(ROOT, 'scripts', 'assess.py')!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    )
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    m = re.search(r"PEAK_KB (\d+)", res.stderr)
    if not m:
        raise RuntimeError(f"no peak reported: {res.stderr[-2000:]}")
    return int(m.group(1)) / 1024.0, wall, res.stdout + res.stderr


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", type=int, default=50)
    p.add_argument("--shape", type=int, nargs=3, default=(576, 576, 88))
    p.add_argument("--low_memory", action="store_true", help="run scripts/assess.py with --low_memory")
    p.add_argument("--output", default=os.path.join(ROOT, "runs", "bench", "memory_assess.json"))
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        studies = write_studies(os.path.join(tmp, "in"), a.studies, tuple(a.shape))
        short = write_studies(os.path.join(tmp, "short"), 1, (64, 64, 4))[0]  # refused as a localizer, after loading
        common = ["--no_html"] + (["--low_memory"] if a.low_memory else [])
        imports, _, _ = peak_of([short, "--output_dir", os.path.join(tmp, "o0"), *common])
        one, t_one, _ = peak_of([studies[0], "--output_dir", os.path.join(tmp, "o1"), *common])
        many, t_many, log = peak_of([os.path.join(tmp, "in"), "--output_dir", os.path.join(tmp, "o2"), *common])
        per_study = [float(x) for x in re.findall(r"\((\d+\.\d+) s\)", log)]
    out = {
        "shape": list(a.shape),
        "studies": a.studies,
        "low_memory": a.low_memory,
        "peak_mb": {"imports_and_networks": round(imports), "one_study": round(one), "all_studies": round(many)},
        "ratio_many_over_one": round(many / one, 3),
        "one_study_over_imports_mb": round(one - imports),
        "wall_s": {"one_study_run": round(t_one, 1), "all_studies_run": round(t_many, 1)},
        "per_study_s": {"first": per_study[0] if per_study else None, "last": per_study[-1] if per_study else None},
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    with open(a.output, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
