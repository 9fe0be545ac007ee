#!/usr/bin/env bash
# Create .venv with everything the project needs (idempotent: a no-op when already up to date).
#   TORCH_SPEC   the torch requirement to install first (default: torch==2.13.0, a CPU build here;
#                GPU users: e.g. TORCH_SPEC="torch==2.13.0" with PIP_INDEX_URL for their CUDA build)
#   EXTRAS       pip extras of this project to install (default: test)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-test}
stamp=.venv/.setup-stamp
want="$TORCH_SPEC|$EXTRAS|$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import ssagan_dist" 2>/dev/null; then
  echo "[setup] .venv is up to date"
  exit 0
fi
echo "[setup] creating .venv ($("$PYTHON" --version))"
if [ ! -x .venv/bin/python ] && ! "$PYTHON" -m venv .venv; then
  # Debian/Ubuntu system Pythons ship venv separately.
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    rm -rf .venv
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    "$PYTHON" -m venv .venv
  else
    echo "[setup] cannot create a virtual environment: install python3-venv" >&2
    exit 1
  fi
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first: a bare 'torch' requirement with no torch installed would pull a multi-GB CUDA build.
echo "[setup] installing $TORCH_SPEC"
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
# ...and held there: without the pin pip's resolver may swap the CPU build for a newer CUDA one
# while it installs the rest (seen here: 2.13.0+cpu replaced by 2.14.1+cu130).
torch_installed=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('torch'))")
echo "[setup] installing ssagan-dist[$EXTRAS] (ray, webdataset, s3fs, ...) with torch==$torch_installed"
# setuptools says "Editable installation ... folders with the same name as your package" on every
# editable build, even with --quiet: information nobody can act on here (the package is its folder).
PYTHONWARNINGS="ignore:Editable installation" \
  .venv/bin/python -m pip install --quiet -e ".[$EXTRAS]" "torch==$torch_installed"
echo "$want" > "$stamp"
echo "[setup] done: source .venv/bin/activate"
