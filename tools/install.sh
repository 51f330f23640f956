#!/usr/bin/env bash
# Creates .venv and installs detx with everything it needs (called by `make install`).
#   1. the locked environment: every package at the exact version of requirements-lock.txt, hashes checked
#      (`make lock` writes it; docs/reproducibility.md), 2. detx in editable mode (no dependencies of its own:
#      the lock holds them, [dev] included),
#   3. detectron2: upstream from GitHub when reachable, else the pure-Python build from PyPI
#      (sal-detectron2, DESIGN §4), both without dependencies (the lock holds them).
#      DETX_DETECTRON2=upstream|pure forces one of them.
#   4. detectron2's model_zoo made independent of pkg_resources (tools/fix_detectron2.py), both routes.
#   5. the installed versions checked against the lock (tools/check_lock.py).
# Fails loudly, naming the step, instead of leaving a half-installed environment behind.
set -Eeuo pipefail

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
LOCK=${LOCK:-requirements-lock.txt}
D2_UPSTREAM="git+https://github.com/facebookresearch/detectron2.git"
D2_PURE="sal-detectron2==0.7.2"
STEP="start"

die() { echo "make install: FAILED during '$STEP': $*" >&2; rm -f "$VENV/.installed"; exit 1; }
trap 'die "command failed (exit $?): $BASH_COMMAND"' ERR

STEP="find python3"
command -v "$PYTHON" >/dev/null 2>&1 || die "no '$PYTHON' on PATH; install Python >= 3.10 or run 'make install PYTHON=/path/to/python3'"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' 2>/dev/null \
  || die "$("$PYTHON" --version 2>&1) is too old; detx needs Python >= 3.10"

STEP="match the lock's Python and platform"
[ -f "$LOCK" ] || die "no lock file $LOCK (run 'make lock' to resolve one)"
lock_py=$(sed -n 's/.*--python-version \([0-9][0-9.]*\).*/\1/p' "$LOCK" | head -n 1)
have_py=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ -n "$lock_py" ] || die "$LOCK does not say which Python it was resolved for (its header has no --python-version)"
[ "$lock_py" = "$have_py" ] || die "$LOCK is resolved for Python $lock_py, but $PYTHON is Python $have_py: run \
'make install PYTHON=python$lock_py', or re-resolve the lock for your Python with 'make lock LOCK_PYTHON=$have_py'"
[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || die "$LOCK is resolved for Linux x86_64, this is \
$(uname -s)-$(uname -m): install into your own environment with 'pip install -e .[dev]' (setup.py's ranges) instead"

STEP="create $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check --no-deps)

STEP="reach the package registry"
"$VENV/bin/python" -m pip download --no-deps --disable-pip-version-check -q -d "$(mktemp -d)" tabulate >/dev/null 2>&1 \
  || die "cannot download from the package registry (PyPI); check the network or pip's index settings"

STEP="install the locked environment ($LOCK, hashes checked)"
"${PIP[@]}" --require-hashes -r "$LOCK"

STEP="install detx (editable; its dependencies, [dev] included, come from the lock)"
"${PIP[@]}" --no-build-isolation -e .

STEP="check a single OpenCV distribution"
n_cv=$("$VENV/bin/python" -m pip list 2>/dev/null | grep -ciE '^opencv-' || true)
[ "$n_cv" = "1" ] || die "expected exactly one opencv-* distribution, found $n_cv: $("$VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^opencv-' | tr '\n' ' ')"

STEP="install detectron2"
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
which_d2=${DETX_DETECTRON2:-}
if [ -z "$which_d2" ]; then
  if timeout 20 git ls-remote --exit-code https://github.com/facebookresearch/detectron2.git HEAD >/dev/null 2>&1; then
    which_d2=upstream
  else
    which_d2=pure
  fi
fi
if [ "$which_d2" = "upstream" ]; then
  rm -f "$site/detx-detectron2.pth"
  "${PIP[@]}" --no-build-isolation "$D2_UPSTREAM" || die "building upstream detectron2 failed (needs a C++ compiler and the torch headers); DETX_DETECTRON2=pure installs the pure-Python build"
  d2_desc="upstream detectron2 from GitHub (compiled ops)"
elif [ "$which_d2" = "pure" ]; then
  target="$VENV/detectron2-pure"
  rm -rf "$target"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps --only-binary=:all: \
    --python-version 3.10 --platform linux_x86_64 --implementation cp --target "$target" "$D2_PURE" \
    || die "could not download $D2_PURE from PyPI"
  rm -rf "$target/tools"  # its tools/ package would shadow this repository's tools/ on sys.path
  (cd "$target" && pwd) > "$site/detx-detectron2.pth"
  d2_desc="pure-Python detectron2 ($D2_PURE, GitHub unreachable; torchvision ops, no rotated boxes / deformable conv)"
else
  die "DETX_DETECTRON2 must be 'upstream' or 'pure', not '$which_d2'"
fi

STEP="make detectron2's model_zoo work without pkg_resources"
# setuptools >= 81 no longer ships pkg_resources, which detectron2's model_zoo imports for one call
# (locating its own config files): replace it there with the standard library (tools/fix_detectron2.py).
"$VENV/bin/python" tools/fix_detectron2.py

STEP="check the installed versions against $LOCK"
"$VENV/bin/python" tools/check_lock.py --lock "$LOCK" || die "the environment differs from $LOCK (listed above)"

STEP="verify the environment"
"$VENV/bin/python" - <<'PY' || die "the installed environment does not import (see the traceback above)"
import torch, torchvision
from torchvision.ops import nms
nms(torch.zeros((1, 4)), torch.ones(1), 0.5)  # fails when torchvision's compiled ops do not match torch
import cv2, detectron2, detx
from detectron2.modeling import build_model  # noqa: F401
from detectron2 import model_zoo
model_zoo.get_config_file("COCO-Detection/retinanet_R_101_FPN_3x.yaml")  # its shipped configs are found
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, opencv {cv2.__version__}, "
      f"detectron2 {detectron2.__version__} at {detectron2.__file__}")
PY
echo "detectron2: installed $d2_desc"
echo "$d2_desc" > "$VENV/.installed"
echo "make install: done ($VENV)"
