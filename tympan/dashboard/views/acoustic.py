"""Acoustic features: per-class distributions over the training data, with the user's clip among them."""

from __future__ import annotations

import numpy as np
import streamlit as st

from tympan.dashboard import plots
from tympan.dashboard.examples import reference_dir
from tympan.dashboard.features_table import (
    KEY_FEATURES,
    LOG_FEATURES,
    FeaturesTable,
    compute_features_table,
    describe_nearest,
    features_of_audio,
    table_key,
    table_path,
)
from tympan.cache import cache_root
from tympan.dashboard.state import Context, current
from tympan.datasets.esc50 import load_esc50
from tympan.errors import AudioError, DataError

AUTO_COMPUTE_MAX_CLIPS = 300


@st.cache_data(show_spinner=False)
def _status(data_dir: str, cache_dir: str) -> tuple[int, str, bool]:
    ds = load_esc50(data_dir)
    path = table_path(table_key(ds, 16_000), cache_dir)
    return len(ds), str(path), path.is_file()


@st.cache_data(show_spinner="Reading the acoustic-features table…")
def _table(data_dir: str, cache_dir: str) -> FeaturesTable:
    return compute_features_table(data_dir, cache_dir=cache_dir)


@st.cache_data(show_spinner="Measuring your clip…")
def _clip_profile(data: bytes) -> tuple[dict[str, float], np.ndarray]:
    import torch

    from tympan.audio import load_audio
    from tympan.features import FrontendConfig, LogMel

    feats = features_of_audio(data)
    wave = load_audio(data, 16_000, max_seconds=600).waveform
    mel = LogMel(FrontendConfig())(torch.from_numpy(wave))[0, 0].numpy()
    return feats, mel.mean(axis=1)


def _load(ctx: Context) -> tuple[FeaturesTable | None, str]:
    try:
        folder, what = reference_dir(ctx.esc50_dir)
        cache_dir = str(cache_root())
        n, path, cached = _status(folder, cache_dir)
    except (DataError, OSError) as exc:
        st.error(f"cannot read the reference data: {exc}")
        return None, ""
    if not cached:
        note = st.empty()
        note.info(f"The acoustic features of {n} clips in {what} are not cached yet "
                f"(about {max(1, n // 20)} s on two cores, once; stored at `{path}`).")
        if n > AUTO_COMPUTE_MAX_CLIPS and not st.button(f"Compute features for {n} clips", key="compute_table"):
            return None, what
        bar = st.progress(0.0, text="measuring clips…")
        try:
            compute_features_table(folder, cache_dir=cache_dir, progress=lambda i, total: bar.progress(i / total, text=f"{i}/{total} clips"))
        except (DataError, AudioError, OSError) as exc:
            st.error(f"cannot compute the acoustic features: {exc}")
            return None, what
        bar.empty()
        note.empty()
        _status.clear()
    return _table(folder, cache_dir), what


def render(ctx: Context) -> None:
    st.title("Acoustic features")
    table, what = _load(ctx)
    if table is None:
        return
    frame = table.frame
    st.caption(f"{len(frame)} clips of {what}, measured at {table.sample_rate // 1000} kHz with "
               "`tympan.stats.acoustic` (statistics over non-silent frames).")
    c1, c2 = st.columns([1, 1])  # half the width each: five fold chips fit, none is cut off
    classes = c1.multiselect("Classes (none chosen = all)", table.classes, default=[], key="ac_classes") \
        or table.classes
    folds = c2.multiselect("Folds", sorted(frame["fold"].unique().tolist()),
                           default=sorted(frame["fold"].unique().tolist()), key="ac_folds")
    mask = frame["class"].isin(classes).to_numpy() & frame["fold"].isin(folds).to_numpy()
    sel = frame[mask]
    if sel.empty:
        st.warning("No clips match these filters.")
        return

    clip = current()
    user, profile = None, None
    if clip is not None:
        try:
            user, profile = _clip_profile(clip.data)
        except (AudioError, ValueError) as exc:
            st.error(f"cannot measure {clip.name}: {exc}")
    if user is not None:
        near = describe_nearest(user, sel)
        st.info(f"**Your clip ({clip.name})**: {near.sentence}.")
        st.caption("Nearest = smallest distance between your clip's z-scores and each class's median z-scores in "
                   + ", ".join(v[0] for v in KEY_FEATURES.values()) + f" (over the {len(sel)} selected clips). "
                   "Five summary features, not a classification: the model's answer is on the Classify page.")
    else:
        st.caption("Classify a clip on the **Classify** page to see it placed among these.")

    tabs = st.tabs(["Distributions", "Frequency spread", "Mel heatmap", "Centroid distribution", "RMS comparison"])
    with tabs[0]:
        feature = st.selectbox("Feature", list(KEY_FEATURES), format_func=lambda f: KEY_FEATURES[f][0],
                               key="ac_feature")
        label, unit, _ = KEY_FEATURES[feature]
        st.plotly_chart(plots.class_box(sel, feature, f"{label} ({unit})" if unit else label,
                                        user_value=None if user is None else user[feature],
                                        log=feature in LOG_FEATURES), key="ac_box")
    with tabs[1]:
        st.plotly_chart(plots.frequency_spread(sel, user=user), key="ac_spread")
        st.caption("Dot = median spectral centroid of the class; bar = ± its median bandwidth.")
    with tabs[2]:
        st.plotly_chart(plots.mel_heatmap(table.class_mean_logmel(mask), table.classes, table.mel_freqs,
                                          user_profile=profile), key="ac_mel")
        st.caption("Time-averaged log-mel energy (default front end, 64 bands) averaged over each class's clips.")
    with tabs[3]:
        if user is not None:
            ranked = [c for c, _ in describe_nearest(user, sel).ranking]
        else:
            ranked = sorted(sel["class"].unique())
        shown = st.multiselect("Classes to overlay", sorted(sel["class"].unique()), default=ranked[:5],
                               key="ac_centroid_classes")
        st.plotly_chart(plots.centroid_distribution(sel, shown, user_value=None if user is None
                                                    else user["spectral_centroid_mean"]), key="ac_centroid")
    with tabs[4]:
        st.plotly_chart(plots.class_box(sel, "rms_dbfs", "RMS level (dBFS)",
                                        user_value=None if user is None else user["rms_dbfs"],
                                        title="RMS level per class"), key="ac_rms")
