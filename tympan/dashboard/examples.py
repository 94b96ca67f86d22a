"""Example clips and the reference data set: the ESC-50 folder if given, else a generated set."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from tympan.cache import cache_root
from tympan.datasets.esc50 import load_esc50

GENERATED_NAME = "dashboard-generated-v1"


@st.cache_resource(show_spinner="Writing the small generated example set…")
def generated_dir() -> str:
    """A small ESC-50-layout set of generated sounds (5 classes x 20 clips), written once."""
    from tympan.datasets.synthetic import make_synthetic

    dest = cache_root() / GENERATED_NAME
    if not (dest / "meta" / "esc50.csv").is_file():
        make_synthetic(dest, n_classes=5, clips_per_class=20)
    return str(dest)


def reference_dir(esc50_dir: str) -> tuple[str, str]:
    """``(folder, description)`` of the data set the pages compare with."""
    if esc50_dir:
        return esc50_dir, f"ESC-50 folder `{esc50_dir}`"
    return generated_dir(), "the small generated set (no ESC-50 folder given: set $TYMPAN_ESC50_DIR or the sidebar)"


@st.cache_data(show_spinner=False)
def clip_index(data_dir: str) -> pd.DataFrame:
    """``clip_id, class, fold, path`` of every clip in an ESC-50-layout folder."""
    ds = load_esc50(data_dir)
    return pd.DataFrame({
        "clip_id": ds.clip_ids,
        "class": [ds.classes[t] for t in ds.labels],
        "fold": ds.folds,
        "path": [str(p) for p in ds.files],
    })


def read_clip(path: str) -> bytes:
    return Path(path).read_bytes()
