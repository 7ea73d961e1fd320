"""bundle.utils: the entry points' third-party quieting, and a package that changes nothing global at import."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_importing_the_bundle_leaves_logging_and_warnings_alone():
    import subprocess
    import sys

    code = (
        "import logging, warnings; import pydicom, monai, torch, scipy, sklearn; "  # their own settings first
        "before = ({n: logging.getLogger(n).level for n in logging.root.manager.loggerDict}, list(warnings.filters)); "
        "import bundle, bundle.io, bundle.inference, bundle.evaluation, bundle.data, bundle.networks; "
        "changed = [n for n, lv in before[0].items() if logging.getLogger(n).level != lv]; "
        "ours = [f for f in warnings.filters if f not in before[1] and 'NvImgCodec' in str(f[1])]; "
        "print(changed == [] and ours == [] and logging.getLogger('monai.data.nvimgcodec_pydicom_plugin').level == 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "True", out.stderr[-2000:]


def test_entry_points_quiet_third_party_noise():
    import logging

    from bundle.utils import QUIET_LOGGERS, quiet_third_party

    quiet_third_party()
    assert all(logging.getLogger(n).level == logging.ERROR for n in QUIET_LOGGERS)
