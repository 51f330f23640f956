#!/usr/bin/env bash
# Re-resolves requirements-lock.txt (called by `make lock`): every package of setup.py's install_requires and
# [dev], under the hand-chosen pins of constraints.txt, at exact versions with their hashes, for one Python
# (LOCK_PYTHON, default 3.11) on Linux x86_64. uv keeps the lock's current pins where they still fit, so only what
# setup.py or constraints.txt changed moves; UPGRADE=1 takes the newest versions that fit instead.
# uv is taken from PATH, else installed (pinned, UV_VERSION) into build/uv-venv. detectron2 is not in the lock
# (not on PyPI): tools/install.sh installs it without dependencies, which setup.py lists.
set -Eeuo pipefail

PYTHON=${PYTHON:-python3}
LOCK=${LOCK:-requirements-lock.txt}
LOCK_PYTHON=${LOCK_PYTHON:-3.11}
UV_VERSION=${UV_VERSION:-0.13.9}

uv=$(command -v uv || true)
if [ -z "$uv" ]; then
  if [ ! -x build/uv-venv/bin/uv ]; then
    "$PYTHON" -m venv build/uv-venv
    build/uv-venv/bin/python -m pip install --disable-pip-version-check -q "uv==$UV_VERSION"
  fi
  uv=build/uv-venv/bin/uv
fi
args=(pip compile setup.py --extra dev -c constraints.txt --generate-hashes
      --python-version "$LOCK_PYTHON" --python-platform x86_64-manylinux_2_28 -o "$LOCK")
[ -n "${UPGRADE:-}" ] && args+=(--upgrade)
"$uv" "${args[@]}"
echo "make lock: wrote $LOCK ($(grep -cE '^[A-Za-z0-9].*==' "$LOCK") packages, Python $LOCK_PYTHON); run 'make install' to install it"
