#!/usr/bin/env bash
# Rebuild the out-of-distribution evaluation set from Debian packages (nothing else downloaded):
# espeak-ng speech (14 voices), fluidsynth music through three General MIDI soundfonts, five desktop
# sound themes and generated noise/tones, split into dev and eval sources (manifest.csv).
# Usage: scripts/build_ood_set.sh [DEST] (default data/ood)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-data/ood}
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  need=()
  for pkg in $(grep -v '^#' scripts/ood-packages.txt); do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
.venv/bin/tympan data ood --dest "$DEST"
