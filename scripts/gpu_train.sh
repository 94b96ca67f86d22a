#!/usr/bin/env bash
# One prepared GPU run (device session): cnn five-fold CV with the robust recipe, one process per
# fold sharing the GPU, then a single-process timing run; results as data in $OUT.
# Needs runs/gpu-cache/cache-default.tar.xz (python scripts/gpu_train.py pack --data-dir ../shared/data/esc50
# --frontend default --out runs/gpu-cache/cache-default.tar.xz) carried to the device.
set -euo pipefail
OUT=${OUT:-out}
CACHE=${CACHE:-runs/gpu-cache/cache-default.tar.xz}
EPOCHS=${EPOCHS:-40}
python scripts/gpu_train.py run --cache "$CACHE" --arch cnn --recipe robust --epochs "$EPOCHS" \
    --folds 1,2,3,4,5 --parallel 5 --out "$OUT/parallel"
python scripts/gpu_train.py run --cache "$CACHE" --arch cnn --recipe robust --epochs 3 \
    --folds 5 --parallel 1 --out "$OUT/single"
python scripts/gpu_train.py run --cache "$CACHE" --arch cnn --recipe baseline --epochs 3 \
    --folds 5 --parallel 1 --out "$OUT/single-baseline"
