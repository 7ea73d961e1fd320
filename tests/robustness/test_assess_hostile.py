"""scripts/assess.py against hostile inputs, weights, output folders and interrupts, as a user runs it (a process).

Each run asserts the one line, the exit status, that good inputs beside bad ones are still assessed, and that
nothing is written outside the output folder (the temporary tree is listed before and after).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from bundle.outputs import lock_output_dir, release_output_dir
from tests.conftest import write_known_detector
from tests.robustness.cases import INPUT_CASES, good_nifti, phantom

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ASSESS = os.path.join(ROOT, "scripts", "assess.py")
OPEN_BOUNDS = {"min_ml": 0.0, "max_ml": 1e9, "min_extent_mm": 0.0, "max_extent_mm": 1e9, "min_kept": 0.0}


def tree(folder, skip: str | None = None) -> set[str]:
    """Every path under ``folder`` (relative), without those under ``skip``."""
    out = set()
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            if skip and (path == skip or path.startswith(skip + os.sep)):
                continue
            out.add(os.path.relpath(path, folder))
    return out


def _foreground_signals() -> None:
    """In the child: Ctrl-C's signal handled as in a terminal's foreground job. A shell starts background jobs
    (``cmd &``, as CI may be run) with SIGINT ignored, and a Python started so keeps ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def assess(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, ASSESS, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        preexec_fn=_foreground_signals,
    )


def rows(out) -> list[dict]:
    with open(os.path.join(out, "qa_report.csv"), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def error_lines(res: subprocess.CompletedProcess) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.startswith(("ERROR", "interrupted"))]


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A known one-logit-per-pixel detector (bright voxels are "LA") with its plan."""
    return write_known_detector(tmp_path_factory.mktemp("w"), 0.5, spatial_size=32, la_bounds=OPEN_BOUNDS)


@pytest.mark.slow
def test_every_hostile_input_gets_its_row(detector, tmp_path):
    inputs = tmp_path / "inputs"
    paths = [case.build(str(inputs)) for case in INPUT_CASES]
    out = tmp_path / "out"
    before = tree(tmp_path)
    res = assess(*paths, "--output_dir", out, "--weights", detector, "--la_only")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr + res.stdout
    assert tree(tmp_path, skip=str(out)) == before  # nothing written beside the inputs or outside the output folder
    got = {r["input"]: r for r in rows(out)}
    for case, path in zip(INPUT_CASES, paths):
        key = path if path in got else os.path.dirname(path)  # a series row names the folder holding it
        if case.build.__name__ == "good_dicom":
            key = os.path.join(path, "S1")
        if case.build.__name__ == "duplicates":
            key = os.path.join(path, "A")
        if case.build.__name__ == "symlink_loop":
            key = os.path.join(path, "S")
        row = got.get(key)
        assert row is not None, (case.name, key, sorted(got))
        assert row["status"] == case.status, (case.name, row)
        assert case.message in row["message"], (case.name, row["message"])
        assert "\n" not in row["message"] and len(row["message"]) < 400, (case.name, row["message"])
    # each instance once: the duplicated series is one volume of its 24 slices, assessed once
    dupes = [r for r in got.values() if "dupes" in r["input"]]
    assert len(dupes) == 1 and dupes[0]["n_slices"] == "24"
    # the truncated file is named, not only its folder
    mid = got[os.path.join(str(inputs), "trunc_mid")]
    assert mid["message"].startswith(os.path.join(str(inputs), "trunc_mid", "IM"))
    # tag text never becomes a path: flattened in the file names, escaped in the page
    names = os.listdir(out)
    assert all((out / n).is_file() for n in names)  # no folder made from a tag's "../../"
    assert any(n.startswith("evil_s7__script_alert_1_script_") for n in names)
    page = next(n for n in names if n.startswith("evil") and n.endswith("_report.html"))
    html = (out / page).read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    report = json.loads((out / "qa_report.json").read_text())
    assert report["complete"] is True and len(report["scans"]) == len(INPUT_CASES)


@pytest.mark.slow
def test_refused_before_any_work(detector, tmp_path):
    """Output folder, weights and input errors: one line, exit 2 (or 1 with a report), before torch is imported."""
    good = good_nifti(str(tmp_path / "in"))
    unwritable = "/sys/la_lge_qa_out" if os.geteuid() == 0 else str(tmp_path / "ro" / "out")
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o555)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(
        b"\x80\x05" + os.urandom(3000)
    )  # a protocol-5 pickle start (torch.save never writes one), noise
    checks = [
        ([good, "--output_dir", unwritable, "--weights", detector, "--la_only"], 2, "cannot write there"),
        (
            [good, "--output_dir", tmp_path / "o1", "--weights", tmp_path / "none.pt", "--la_only"],
            2,
            "LA detector weights",
        ),
        (
            [good, "--output_dir", tmp_path / "o2", "--weights", detector, "--qa_weights", tmp_path / "none.pt"],
            2,
            "QA network weights",
        ),
        (
            [
                good,
                "--output_dir",
                tmp_path / "o3",
                "--weights",
                detector,
                "--config",
                tmp_path / "none.yaml",
                "--la_only",
            ],
            2,
            "config overlay",
        ),
        (
            [
                tmp_path / "missing1",
                tmp_path / "missing2",
                "--output_dir",
                tmp_path / "o4",
                "--weights",
                detector,
                "--la_only",
            ],
            1,
            "missing1: not found and 1 more",
        ),
    ]
    for args, status, fragment in checks:
        code = (
            "import sys; sys.argv = ['assess'] + sys.argv[1:]; from scripts import assess; rc = assess.main("
            "sys.argv[1:]); print('heavy imported:', 'torch' in sys.modules); sys.exit(rc)"
        )
        res = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT)
        assert res.returncode == status, (args, res.stderr)
        lines = error_lines(res)
        assert len(lines) == 1 and fragment in lines[0], (args, res.stderr)
        assert "heavy imported: False" in res.stdout, args  # refused before the 10 s of imports
        assert "Traceback" not in res.stderr
    # every input missing: the refusals are the report
    assert [(r["status"], r["message"]) for r in rows(tmp_path / "o4")] == [
        ("error", f"{tmp_path / 'missing1'}: not found"),
        ("error", f"{tmp_path / 'missing2'}: not found"),
    ]
    # weights that exist but are not weights: one short line after loading
    for weights, fragment in ((garbage, "not a PyTorch checkpoint"), (tmp_path / "wrong.pt", "does not fit")):
        if weights.name == "wrong.pt":
            torch.save(torch.nn.Linear(3, 2).state_dict(), weights)
        weights.with_suffix(".json").write_text(open(detector.replace(".pt", ".json")).read())  # a valid plan beside
        res = assess(good, "--output_dir", tmp_path / f"o_{weights.stem}", "--weights", weights, "--la_only")
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
        lines = error_lines(res)
        assert len(lines) == 1 and fragment in lines[0] and len(lines[0].replace(str(tmp_path), "")) < 250, lines


@pytest.mark.slow
def test_every_input_refused_still_writes_the_report(detector, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(500))
    out = tmp_path / "out"
    res = assess(empty, junk, "--output_dir", out, "--weights", detector, "--la_only")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert [r["status"] for r in rows(out)] == ["error", "error"]
    assert "empty folder" in rows(out)[0]["message"] and "not a DICOM" in rows(out)[1]["message"]
    assert f"see {out / 'qa_report.csv'}" in error_lines(res)[0]


@pytest.mark.slow
def test_existing_outputs_hint_works_when_copied(detector, tmp_path):
    good = good_nifti(str(tmp_path / "in"))
    out = tmp_path / "out"
    assert assess(good, "--output_dir", out, "--weights", detector, "--la_only").returncode == 0
    before = {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)}
    res = assess(good, "--output_dir", out, "--weights", detector, "--la_only")
    assert res.returncode == 2 and "pass --overwrite to replace them" in error_lines(res)[0]
    assert {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)} == before  # nothing touched
    for flag in (["--overwrite"], ["--overwrite", "true"]):  # both forms the hints and the bundle runner use
        assert assess(good, "--output_dir", out, "--weights", detector, "--la_only", *flag).returncode == 0


@pytest.mark.slow
def test_a_second_run_into_a_busy_folder_is_refused(detector, tmp_path):
    good = good_nifti(str(tmp_path / "in"))
    out = tmp_path / "out"
    out.mkdir()
    lock_output_dir(str(out))  # this process holds it, as a running assessment would
    try:
        res = assess(good, "--output_dir", out, "--weights", detector, "--la_only")
        assert res.returncode == 2 and "in use by another assessment" in error_lines(res)[0], res.stderr[-2000:]
        assert not (out / "qa_report.csv").exists()
    finally:
        release_output_dir(str(out))
    assert assess(good, "--output_dir", out, "--weights", detector, "--la_only").returncode == 0
    assert not (out / ".qa_report.lock").exists()  # released at the end


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_interrupted_run_keeps_finished_rows_and_resumes(detector, tmp_path, signal_name):
    from tests.conftest import write_nifti

    folder = tmp_path / "many"
    for i in range(5):
        write_nifti(str(folder / f"scan{i}.nii.gz"), phantom((40, 36, 24), seed=i).astype("int16"))
    overlay = tmp_path / "interrupt.json"
    overlay.write_text(
        json.dumps(
            {
                "handlers": [
                    "@report",
                    {"_target_": "tests.robustness.helpers.InterruptAfter", "n": 2, "signal_name": signal_name},
                ]
            }
        )
    )
    out = tmp_path / "out"
    res = assess(folder, "--output_dir", out, "--weights", detector, "--la_only", "--config", overlay)
    assert res.returncode == 130, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert error_lines(res) == [
        f"interrupted: 2 of 5 scan(s) assessed, kept in {out / 'qa_report.csv'}; continue "
        "with the same command and --resume"
    ]
    got = rows(out)
    assert [r["status"] for r in got] == ["ok", "ok", "error", "error", "error"]
    assert all("the run was interrupted (rerun with --resume" in r["message"] for r in got[2:])
    assert json.loads((out / "qa_report.json").read_text())["complete"] is False
    assert not [n for n in os.listdir(out) if n.endswith(".tmp") or ".tmp." in n]  # no half-written file
    first = {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out) if n.startswith(("scan0", "scan1"))}
    res = assess(folder, "--output_dir", out, "--weights", detector, "--la_only", "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming: 2 scan(s) already assessed" in res.stderr + res.stdout
    assert [r["status"] for r in rows(out)] == ["ok"] * 5
    assert {n: os.stat(out / n).st_mtime_ns for n in first} == first  # finished scans not assessed again
    assert json.loads((out / "qa_report.json").read_text())["complete"] is True


@pytest.mark.slow
def test_qa_input_size_must_match_its_plan(detector, tmp_path):
    good = good_nifti(str(tmp_path / "in"))
    qa = os.path.join(ROOT, "models", "qa.pt")  # the shipped QA network, with its plan (64-pixel LA regions)
    res = assess(
        good, "--output_dir", tmp_path / "out", "--weights", detector, "--qa_weights", qa, "--qa_spatial_size", 96
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = error_lines(res)
    assert len(lines) == 1 and "qa_spatial_size 96 differs from the 64" in lines[0], res.stderr[-2000:]
    assert not (tmp_path / "out" / "qa_report.csv").exists()
