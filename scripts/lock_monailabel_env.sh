#!/usr/bin/env bash
# Re-resolve requirements-monailabel.txt: resolve the direct requirements below (with pip's resolver, nothing
# installed) and rewrite the file's package list, keeping its comment header. Review the diff, then rebuild the
# environment with scripts/setup_monailabel_env.sh (its hash changes, so it rebuilds).
#
#   scripts/lock_monailabel_env.sh          # about 3 minutes; PYTHON picks the interpreter (default python3)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
req="$root/requirements-monailabel.txt"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The direct requirements: monailabel's own (its METADATA, without monai and sam2, pinned below or left out),
# monai with the extras monailabel asks for, and the bundle's runtime packages at requirements.txt's versions where
# monailabel allows them. torch===2.13.0: the PyPI (CUDA) build, never a local +cpu build (see the lock's header).
direct=(
    "torch===2.13.0" "torchvision==0.28.0" "numpy==1.26.4" "pydicom==2.4.5"
    "monai[fire,gdown,ignite,itk,lmdb,mlflow,nibabel,openslide,pillow,psutil,skimage,tensorboard,torchvision,tqdm]==1.6.1"
    "pytorch-ignite==0.5.5" "nibabel==5.4.2" "itk==5.4.7" "scikit-image==0.26.0" "scikit-learn==1.9.1"
    "mlflow==3.17.2" "fire==0.7.1" "pyyaml==6.0.3" "scipy==1.17.1" "matplotlib==3.11.2"
)

"$python" -m venv "$work/venv"
"$work/venv/bin/pip" download --quiet --no-deps -d "$work" monailabel==0.8.5
mapfile -t own < <(unzip -p "$work"/monailabel-0.8.5-*.whl '*/METADATA' | sed -n 's/^Requires-Dist: //p' \
    | grep -v -E '^(monai|sam2)([^a-z_-]|$)')
"$work/venv/bin/pip" install --quiet --dry-run --ignore-installed --report "$work/report.json" \
    "${direct[@]}" "${own[@]}"

"$python" - "$work/report.json" "$req" <<'PY'
import json
import re
import sys

report, req = sys.argv[1:]
rows = [(re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(), i["metadata"]["version"])
        for i in json.load(open(report))["install"]]
rows = sorted(rows + [("monailabel", "0.8.5")])
lines = []
for name, version in rows:
    line = f"{name}{'===' if name == 'torch' else '=='}{version}"
    if name.startswith(("nvidia-", "cuda-")) or name == "triton":  # torch's CUDA dependencies exist on Linux only
        line += '; platform_system == "Linux"'
    lines.append(line)
header = [line for line in open(req).read().splitlines() if line.startswith("#")]
open(req, "w").write("\n".join(header + lines) + "\n")
print(f"{req}: {len(lines)} packages")
PY
