#!/usr/bin/env bash
# Rebuild the out-of-distribution evaluation set from Debian packages (nothing else downloaded):
# espeak-ng speech, fluidsynth music with General MIDI soundfonts, desktop notification sounds,
# and generated noise/tones/silence. Usage: scripts/build_ood_set.sh [DEST] (default data/ood)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-data/ood}
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  need=()
  for pkg in espeak-ng fluidsynth timgm6mb-soundfont sound-theme-freedesktop gnome-audio; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi
.venv/bin/tympan data ood --dest "$DEST"
