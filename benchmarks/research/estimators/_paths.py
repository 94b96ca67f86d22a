"""Where the estimator research scripts find the repository and keep their working files."""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
WORK = Path(os.environ.get("TYMPAN_RESEARCH_DIR", Path.home() / ".cache" / "tympan" / "research" / "estimators"))
WORK.mkdir(parents=True, exist_ok=True)
DATA = Path(os.environ.get("TYMPAN_ESC50_DIR", REPO.parent / "shared" / "data" / "esc50"))
for p in (str(REPO), str(REPO / "benchmarks"), str(Path(__file__).resolve().parent)):
    if p not in sys.path:
        sys.path.insert(0, p)
