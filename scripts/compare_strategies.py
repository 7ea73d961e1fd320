"""Compare the three QA training strategies over K seeds on one patient split (the paper's Table 2), in MLflow.

Every strategy-seed trains with the bundle's workflow and is evaluated on the test patients; each is a child run
of one parent MLflow run. Writes ``<output_dir>/compare_<time>/comparison.md`` and ``.csv`` (mean ± std over seeds,
with the logistic-regression reference row) and ``embeddings_tsne.png`` (test-slice embeddings of the first seed).

Any other ``--name value`` is a config override applied to every run (as with ``monai.bundle run``), e.g.

    python scripts/compare_strategies.py --seeds 3 --dataset_dir ../shared/data/la2018 --test_size 6 \\
        --max_epochs 10 --pretrain_epochs 20 --spatial_size 64 --train_slice_step 2

``--reevaluate runs/compare_<time>`` trains nothing: it evaluates that comparison's checkpoints again with the
given overrides on top of its own (e.g. ``--qa_slices detector``) and tabulates them as the comparison did.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bundle.errors import entry_point  # noqa: E402
from bundle.evaluation.compare import STRATEGIES, compare_strategies, reevaluate  # noqa: E402
from bundle.utils import parse_overrides  # noqa: E402


@entry_point
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="5", help="K (seeds 0..K-1) or a comma-separated list of seeds (default 5)")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma-separated, among {list(STRATEGIES)}")
    p.add_argument("--output_dir", default="runs", help="the bundle's output folder (default runs)")
    p.add_argument("--bundle_root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p.add_argument("--split_seed", type=int, default=0, help="seed of the patient split shared by all runs")
    p.add_argument("--no_reference", action="store_true", help="leave out the logistic-regression reference row")
    p.add_argument("--projection", default="tsne", choices=["tsne", "umap", "none"], help="embedding picture")
    p.add_argument("--reevaluate", metavar="COMPARE_DIR", help="evaluate a finished comparison's checkpoints again")
    p.add_argument("--tag", default="reeval", help="name of the re-evaluation (with --reevaluate)")
    args, rest = p.parse_known_args(argv)
    try:
        overrides = parse_overrides(rest)
    except ValueError as e:
        raise SystemExit(f"ERROR: {e}") from None
    seeds = [int(s) for s in args.seeds.split(",")] if "," in args.seeds else int(args.seeds)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    command = "python scripts/compare_strategies.py " + " ".join(shlex.quote(a) for a in argv)
    if args.reevaluate:
        reevaluate(args.reevaluate, overrides, tag=args.tag, reference=not args.no_reference, command=command)
        return 0
    compare_strategies(
        output_dir=args.output_dir,
        seeds=seeds,
        strategies=[s for s in args.strategies.split(",") if s],
        overrides=overrides,
        bundle_root=args.bundle_root,
        split_seed=args.split_seed,
        reference=not args.no_reference,
        projection=args.projection,
        command=command,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
