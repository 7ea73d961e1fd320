"""Turn a CSV of quality scores (like la2018/qa_scores.csv) and a folder of images and masks into a datalist.

Example:
    python scripts/make_datalist.py --dataset_dir ../shared/data/la2018 --csv ../shared/data/la2018/qa_scores.csv \
        --seg_images images --seg_labels labels --output runs/dataset.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bundle.data.datalist import DatalistError, load_datalist, validate_datalist  # noqa: E402
from bundle.data.make_datalist import datalist_from_csv  # noqa: E402
from bundle.errors import entry_point  # noqa: E402


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset_dir", required=True, help="folder every path is relative to")
    p.add_argument("--csv", help="CSV: image, [label], [patient], nulling, sharpness, enhancement, fibrosis")
    p.add_argument("--seg_images", help="folder (under dataset_dir) of images that have LA masks")
    p.add_argument("--seg_labels", help="folder (under dataset_dir) of the LA masks, same file names")
    p.add_argument("--patient_pattern", help="regex whose first group is the patient id in a file name")
    p.add_argument("--output", required=True, help="datalist JSON to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no_check", action="store_true", help="skip checking that files exist and masks match")
    a = p.parse_args(argv)
    if os.path.exists(a.output) and not a.overwrite:
        print(f"ERROR {a.output}: exists (pass --overwrite to replace it)", file=sys.stderr)
        return 1
    os.makedirs(os.path.dirname(os.path.abspath(a.output)), exist_ok=True)
    tmp = a.output + ".tmp"
    try:
        datalist = datalist_from_csv(a.csv, a.dataset_dir, a.seg_images, a.seg_labels, a.patient_pattern)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(datalist, f, indent=1)
        if not a.no_check:
            validate_datalist(load_datalist(tmp, a.dataset_dir))
        os.replace(tmp, a.output)
    except DatalistError as e:
        print(f"ERROR {e}", file=sys.stderr)
        return 1
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"wrote {a.output}: {len(datalist['segmentation'])} segmentation, {len(datalist['quality'])} quality entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
