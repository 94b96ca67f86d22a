#!/usr/bin/env bash
# One prepared GPU run (device session): a five-fold CV, one process per fold sharing the GPU,
# then a single-process timing run; results as data in $OUT (esc50_cv.json entries, fold records
# in folds.json keyed by config hash: copy them into benchmarks/results/folds.json).
# Needs the packed feature cache carried to the device, e.g. for cnn:
#   python scripts/gpu_train.py pack --data-dir ../shared/data/esc50 --frontend default --out runs/gpu-cache/cache-default.tar.xz
# Rehearse on the CPU first: tests/test_gpu_script.py runs the same script on a tiny set.
set -euo pipefail
OUT=${OUT:-out}
CACHE=${CACHE:-runs/gpu-cache/cache-default.tar.xz}
ARCH=${ARCH:-cnn}
RECIPE=${RECIPE:-robust}
EPOCHS=${EPOCHS:-40}
FOLDS=${FOLDS:-1,2,3,4,5}
INIT=${INIT:+--init "$INIT"}
# shellcheck disable=SC2086
python scripts/gpu_train.py run --cache "$CACHE" --arch "$ARCH" $INIT --recipe "$RECIPE" --epochs "$EPOCHS" \
    --folds "$FOLDS" --parallel 5 --out "$OUT/parallel"
# shellcheck disable=SC2086
python scripts/gpu_train.py run --cache "$CACHE" --arch "$ARCH" $INIT --recipe "$RECIPE" --epochs 3 \
    --folds 5 --parallel 1 --out "$OUT/single"
