#!/usr/bin/env bash
# Create .venv and install tympan with everything it needs (idempotent, ~2 minutes fresh).
# torch is installed first, pinned to the CPU build, so nothing later pulls a CUDA build.
# Override with TYMPAN_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# System packages the tests and tools use, where we may install them (root with apt-get):
# Chromium + driver (browser tests), ffmpeg (`tympan listen` on files and streams), mosquitto (the MQTT
# broker the alert test starts), and every package of
# scripts/ood-packages.txt (espeak-ng,
# fluidsynth, three GM soundfonts, five sound themes: the whole out-of-distribution set; with fewer,
# `tympan data ood` builds a smaller set and says what is missing). Without them those tests skip.
# TYMPAN_SYSTEM_DEPS=0 skips.
if [ "${TYMPAN_SYSTEM_DEPS:-1}" = 1 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  need=()
  for pkg in chromium chromium-driver ffmpeg mosquitto $(grep -v '^#' scripts/ood-packages.txt); do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing system packages: ${need[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"; } >/dev/null 2>&1 \
      || echo "warning: could not install ${need[*]}; the tests that need them will skip"
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q ${TYMPAN_TORCH:-torch==2.13.0} 2>&1 | grep -vE "^WARNING: Location|BuildBackendWarning|^ *(\*+|!!|Please be careful|name as your package|with strategy)|^ *$" || true
.venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -vE "^WARNING: Location|BuildBackendWarning|^ *(\*+|!!|Please be careful|name as your package|with strategy)|^ *$" || true
.venv/bin/python -c "import torch, tympan; print(f'tympan {tympan.__version__} ready (torch {torch.__version__})')"
