#!/usr/bin/env bash
# Re-measure every results file that describes the SHIPPED model (tympan/assets/default), then
# regenerate the README tables from them. Run it after replacing the shipped bundle: each figure in
# README.md and docs/ about the shipped model comes from one of these files.
#
# Usage: scripts/regenerate_results.sh [SECTION ...]   (default: all, in this order)
#   robustness  benchmarks/results/robustness.json + candidates.json   (~20 min on 1 core)
#   trust       benchmarks/results/trust_ood.json, trust_performance.json  (~5 min)
#   other       benchmarks/results/other_sources.json (recordings from other sources than Freesound; the
#               set, OTHER_DIR, default data/other-sources, is built by scripts/build_other_sources.sh
#               when missing: it downloads Debian packages; ~4 min)
#   diagnostics benchmarks/results/diagnostics.json (calibration, OOD, drift power; --reps 200, ~15 min)
#   events      benchmarks/results/events.json (~10 min)
#   live        benchmarks/results/live.json (real-time factor and latency; a timing: run it on a
#               quiet machine; the 24-hour memory section is kept, --reuse-memory)
# Needs ESC-50 (TYMPAN_ESC50_DIR, default ../shared/data/esc50) and the OOD set
# (OOD_DIR, default data/ood; built by scripts/build_ood_set.sh when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${TYMPAN_ESC50_DIR:-../shared/data/esc50}
OOD=${OOD_DIR:-data/ood}
OTHER=${OTHER_DIR:-data/other-sources}
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(robustness trust other diagnostics events live)
[ -f "$OOD/manifest.csv" ] || bash scripts/build_ood_set.sh "$OOD"
for s in "${sections[@]}"; do
  echo "== $s ($(date -u +%H:%M:%S) UTC)"
  case $s in
    robustness)
      "$PY" benchmarks/robustness.py --data-dir "$DATA" --threads 1 --quiet
      "$PY" benchmarks/candidates.py ;;
    trust)
      "$PY" benchmarks/trust_ood.py --data-dir "$DATA" --ood-dir "$OOD"
      "$PY" benchmarks/trust.py --section performance --data-dir "$DATA" ;;
    other)
      [ -f "$OTHER/manifest.csv" ] || PYTHON="$PY" bash scripts/build_other_sources.sh "$OTHER"
      "$PY" benchmarks/other_sources.py --data-dir "$DATA" --set-dir "$OTHER" --ood-dir "$OOD" ;;
    diagnostics)
      "$PY" benchmarks/diagnostics.py --data-dir "$DATA" --ood-dir "$OOD" --reps 200 \
        --json benchmarks/results/diagnostics.json ;;
    events)
      "$PY" benchmarks/events.py --data-dir "$DATA" ;;
    live)
      "$PY" benchmarks/live.py --data-dir "$DATA" --reuse-memory ;;
    *) echo "unknown section: $s (robustness, trust, other, diagnostics, events, live)" >&2; exit 2 ;;
  esac
done
"$PY" benchmarks/readme_tables.py
