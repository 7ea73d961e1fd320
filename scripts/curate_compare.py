"""Retrain on a curation's curated datalist and compare with the full datalist in one table (same split and seeds).

Pass the settings the curation ran with (and the training budget); any ``--name value`` is a config override applied
to every run, e.g.

    python scripts/curate_compare.py --curation runs/curate_<time> --seeds 1 --test_size 6 --qa_slices mask \\
        --spatial_size 64 --max_epochs 6 --batch_size 32 --train_slice_step 4

Writes ``<output_dir>/curate_compare_<time>/comparison.md`` and ``.csv`` (rows: full, curated) and logs every run
as an MLflow child of one parent run.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bundle.curation.compare import compare_curation  # noqa: E402
from bundle.errors import entry_point  # noqa: E402
from bundle.evaluation.compare import STRATEGIES  # noqa: E402
from bundle.utils import parse_overrides  # noqa: E402


@entry_point
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--curation", required=True, help="a curate run folder (runs/curate_<time>)")
    p.add_argument("--seeds", default="1", help="K (seeds 0..K-1) or a comma-separated list of seeds (default 1)")
    p.add_argument(
        "--strategy", default="baseline", choices=list(STRATEGIES), help="QA strategy trained (default baseline)"
    )
    p.add_argument("--output_dir", default=None, help="the bundle's output folder (default: the curation's parent)")
    p.add_argument("--bundle_root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args, rest = p.parse_known_args(argv)
    try:
        overrides = parse_overrides(rest)
    except ValueError as e:
        raise SystemExit(f"ERROR: {e}") from None
    seeds = [int(s) for s in args.seeds.split(",")] if "," in args.seeds else int(args.seeds)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    command = "python scripts/curate_compare.py " + " ".join(shlex.quote(a) for a in argv)
    compare_curation(args.curation, overrides, seeds, args.strategy, args.output_dir, args.bundle_root, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
