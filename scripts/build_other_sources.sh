#!/usr/bin/env bash
# Rebuild the "beyond Freesound" development set (issue #20 item 6) from Debian packages: each
# package of tympan.datasets.other_sources.PACKAGES is fetched with `apt-get download` and unpacked
# with `dpkg -x` into a temporary folder (no root, nothing installed), then the builder cuts 5-s
# 16 kHz clips and writes manifest.csv. Reserved packages are refused by the builder; a package
# whose credits mention Freesound is skipped by it with a message.
# Usage: scripts/build_other_sources.sh [DEST] (default data/other-sources)
#        KEEP_DEBS=DIR keeps the downloaded .deb files in DIR (and reuses them next time)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-data/other-sources}
PY=${PYTHON:-.venv/bin/python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tympan-other-sources.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
DEBS=${KEEP_DEBS:-$WORK/debs}
mkdir -p "$DEBS" "$WORK/x"
mapfile -t PKGS < <("$PY" -m tympan.datasets.other_sources --list-packages)
need=()
for pkg in "${PKGS[@]}"; do
  ls "$DEBS/${pkg}"_*.deb >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  (cd "$DEBS" && apt-get download "${need[@]}")
fi
for pkg in "${PKGS[@]}"; do
  deb=$(ls "$DEBS/${pkg}"_*.deb 2>/dev/null | head -n1 || true)
  [ -n "$deb" ] || { echo "other sources: no .deb for $pkg (not in this apt's lists?)" >&2; continue; }
  mkdir -p "$WORK/x/$pkg" && dpkg -x "$deb" "$WORK/x/$pkg"
done
"$PY" -m tympan.datasets.other_sources "$DEST" --extracted "$WORK/x"
