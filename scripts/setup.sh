#!/usr/bin/env bash
# Create .venv and install tympan with everything it needs (idempotent, ~2 minutes fresh).
# torch is installed first, pinned to the CPU build, so nothing later pulls a CUDA build.
# Override with TYMPAN_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q ${TYMPAN_TORCH:-torch==2.13.0} 2>&1 | grep -vE "^WARNING: Location|BuildBackendWarning|^ *(\*+|!!|Please be careful|name as your package|with strategy)|^ *$" || true
.venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -vE "^WARNING: Location|BuildBackendWarning|^ *(\*+|!!|Please be careful|name as your package|with strategy)|^ *$" || true
.venv/bin/python -c "import torch, tympan; print(f'tympan {tympan.__version__} ready (torch {torch.__version__})')"
