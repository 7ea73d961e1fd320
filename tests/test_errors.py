"""The bundle's typed errors and their one formatter (bundle.errors)."""

import os
import subprocess
import sys

import pytest

from bundle.data.datalist import DatalistError
from bundle.errors import (
    BundleError,
    ConfigError,
    DataError,
    InputError,
    TrainingInterrupted,
    WeightsError,
    entry_point,
    error_line,
    exit_status,
    find_error,
    one_line,
)
from bundle.networks.plan import PlanError
from bundle.outputs import OutputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _wrapped(e: BaseException) -> RuntimeError:
    """``e`` as MONAI's config parser hands it on: inside a RuntimeError (raised from it)."""
    try:
        try:
            raise e
        except Exception as inner:
            raise RuntimeError("Failed to evaluate $...") from inner
    except RuntimeError as outer:
        return outer


def test_lines_name_the_category():
    assert (
        error_line(WeightsError("models/x.pt not found: train it")) == "ERROR weights: models/x.pt not found: train it"
    )
    assert error_line(ConfigError("a.yaml: no 'network_def'")) == "ERROR config: a.yaml: no 'network_def'"
    assert error_line(OutputError("out: in use")) == "ERROR output: out: in use"
    assert error_line(InputError("nothing could be assessed")) == "ERROR input: nothing could be assessed"
    assert error_line(BundleError("no checkpoint at x")) == "ERROR: no checkpoint at x"
    assert error_line(TrainingInterrupted("interrupted in epoch 2: ...")) == "interrupted in epoch 2: ..."
    assert error_line(ValueError("first\nsecond")) == "ERROR: ValueError: first"
    assert one_line(KeyError()) == "KeyError"


def test_wrapped_errors_give_the_same_line_and_status():
    e = _wrapped(DataError("d.json: quality[0] (patient a): score 7"))
    assert find_error(e).__class__ is DataError
    assert error_line(e) == "ERROR data: d.json: quality[0] (patient a): score 7"
    assert exit_status(e) == 2
    assert exit_status(_wrapped(InputError("nothing"))) == 1
    assert exit_status(_wrapped(KeyError("k"))) == 2 and find_error(_wrapped(KeyError("k"))) is None


def test_library_errors_are_of_the_standard_kinds():
    # callers catching ValueError / OSError (as MONAI's code does) still catch them
    assert issubclass(DatalistError, DataError) and issubclass(DatalistError, ValueError)
    assert issubclass(PlanError, WeightsError) and issubclass(PlanError, ValueError)
    assert issubclass(OutputError, OSError) and issubclass(OutputError, BundleError)
    assert error_line(PlanError("models/x.json: no plan")) == "ERROR weights: models/x.json: no plan"


def test_entry_point_prints_one_line_and_returns_the_status(capsys):
    @entry_point
    def main(kind):
        raise _wrapped(kind("it is wrong; do this"))

    assert main(WeightsError) == 2
    assert capsys.readouterr().err == "ERROR weights: it is wrong; do this\n"
    assert main(InputError) == 1
    with pytest.raises(RuntimeError):  # not a bundle error: unchanged, with its traceback
        main(ZeroDivisionError)


@pytest.mark.parametrize(
    "error,line,traceback",
    [
        ("bundle.errors.DataError('d.json: bad entry')", "ERROR data: d.json: bad entry", False),
        ("ZeroDivisionError('plain')", "ZeroDivisionError: plain", True),
    ],
)
def test_excepthook_of_a_workflow_prints_one_line(error, line, traceback):
    code = (
        "import bundle.errors\nbundle.errors.install_excepthook()\n"
        f"try:\n    raise {error}\nexcept Exception as e:\n    raise RuntimeError('Failed to evaluate') from e\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert ("Traceback" in res.stderr) is traceback
    if traceback:
        assert line in res.stderr
    else:
        assert res.stderr.strip() == line
