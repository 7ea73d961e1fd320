#!/usr/bin/env bash
# Build, or reuse, the MONAI Label environment of this bundle: a virtual environment outside the checkout holding
# exactly requirements-monailabel.txt (monailabel 0.8.5 pins numpy < 2, so it cannot share the main environment).
#
#   scripts/setup_monailabel_env.sh [VENV_DIR]
#
# VENV_DIR defaults to $LA_LGE_QA_MONAILABEL_VENV, else ${XDG_CACHE_HOME:-$HOME/.cache}/la_lge_qa/monailabel-venv.
# PYTHON picks the interpreter (default python3; tested with 3.11). The environment is reused as long as the hash of
# the requirements (comments aside) and the interpreter's version, stored in VENV_DIR/.la_lge_qa_requirements.sha256,
# match; otherwise it is rebuilt. A folder that this script did not build is never deleted. The last line printed on
# stdout is the environment's path; progress goes to stderr.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
req="$root/requirements-monailabel.txt"
venv="${1:-${LA_LGE_QA_MONAILABEL_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/la_lge_qa/monailabel-venv}}"
python="${PYTHON:-python3}"
stamp_name=".la_lge_qa_requirements.sha256"

log() { echo "setup_monailabel_env: $*" >&2; }
die() { echo "ERROR setup_monailabel_env: $*" >&2; exit 1; }

[ -f "$req" ] || die "$req: not found"
command -v "$python" >/dev/null || die "interpreter '$python' not found (set PYTHON)"
pyver="$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' || die "$python is $pyver; need >= 3.9"
# the requirements without comments and blank lines, and the interpreter's version: what the environment is made of
hash="$( { grep -v -E '^[[:space:]]*(#|$)' "$req"; echo "python $pyver"; } | sha256sum | cut -d' ' -f1)"

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"  # one build at a time per environment (CI jobs may share a cache)
flock 9

if [ -f "$venv/$stamp_name" ] && [ "$(cat "$venv/$stamp_name")" = "$hash" ] && [ -x "$venv/bin/monailabel" ]; then
    log "reusing $venv (requirements unchanged)"
    echo "$venv"
    exit 0
fi
if [ -e "$venv" ]; then
    if [ -f "$venv/$stamp_name" ] || [ -f "$venv/.la_lge_qa_building" ]; then
        log "requirements changed or an earlier build did not finish: rebuilding $venv"
        rm -rf "$venv"
    else
        die "$venv exists and was not built by this script; remove it or pass another VENV_DIR"
    fi
fi

start=$(date +%s)
log "building $venv with $python $pyver from $req"
mkdir -p "$venv"
touch "$venv/.la_lge_qa_building"
"$python" -m venv "$venv"
# --no-deps: the file is a complete lock; --no-cache-dir: the wheels (several GB with torch's CUDA libraries) are
# not kept a second time in pip's cache.
"$venv/bin/python" -m pip install --quiet --no-deps --no-cache-dir -r "$req"

# The only inconsistency pip may report is the deliberately omitted sam2 (see requirements-monailabel.txt).
problems="$("$venv/bin/python" -m pip check 2>&1 \
    | grep -v -i -E '^monailabel [0-9.]+ requires sam2,|^No broken requirements' || true)"
[ -z "$problems" ] || die "pip check: $problems"
"$venv/bin/python" - <<'PY' || die "the new environment does not import what the app needs"
import importlib
for name in ("monailabel", "monailabel.app", "monailabel.tasks.infer.bundle", "monailabel.tasks.train.bundle",
             "torchvision", "monai", "ignite", "nibabel", "pydicom", "itk", "skimage", "sklearn", "mlflow", "fire",
             "yaml", "scipy", "matplotlib"):
    importlib.import_module(name)
PY

rm -f "$venv/.la_lge_qa_building"
echo "$hash" > "$venv/$stamp_name"
log "built $venv in $(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1)"
echo "$venv"
