"""Classify: upload, record or pick a clip; see what the model saw and how sure it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from tympan.dashboard import plots
from tympan.dashboard.examples import clip_index, read_clip, reference_dir
from tympan.dashboard.state import Clip, Context, current, results_for, set_current
from tympan.errors import DataError

AUDIO_TYPES = ["wav", "flac", "ogg", "opus", "mp3", "aiff", "aif", "au", "w64", "caf"]
SOURCES = {"upload": "Upload a file", "microphone": "Record", "example": "Example clip"}


def _pick_clip(ctx: Context) -> Clip | None:
    source = st.radio("Audio", list(SOURCES), format_func=SOURCES.__getitem__, horizontal=True, key="clip_source")
    if source == "upload":
        up = st.file_uploader("Audio file (WAV, FLAC, OGG/Opus, MP3, …)", type=None, key="upload",
                              help="Any format libsndfile reads; the API decodes it exactly as in training.")
        return Clip(up.name, up.getvalue(), "upload") if up is not None else None
    if source == "microphone":
        rec = st.audio_input("Record from the microphone", key="mic")
        return Clip("recording.wav", rec.getvalue(), "microphone") if rec is not None else None
    try:
        folder, what = reference_dir(ctx.esc50_dir)
        index = clip_index(folder)
    except (DataError, OSError) as exc:
        st.error(f"cannot list example clips: {exc}")
        return None
    st.caption(f"Examples from {what}.")
    c1, c2 = st.columns(2)
    classes = sorted(index["class"].unique())
    cls = c1.selectbox("Class", classes, key="example_class")
    rows = index[index["class"] == cls]
    clip_id = c2.selectbox("Clip", list(rows["clip_id"]), key="example_clip")
    path = rows.loc[rows["clip_id"] == clip_id, "path"].iloc[0]
    return Clip(Path(path).name, read_clip(path), "example")


def _ood_badge(pred: dict[str, Any]) -> None:
    ood = pred.get("ood") or {}
    score, thr = ood.get("score"), ood.get("threshold")
    name = ood.get("score_name", "OOD")
    rel = f"{name} score {score:.2f}" if isinstance(score, int | float) else f"{name} score n/a"
    rel += f" vs threshold {thr:.3f}" if isinstance(thr, int | float) else " (no threshold fitted)"
    reasons = pred.get("uncertain_reasons") or []
    background = pred.get("background") or {}
    if background.get("background"):
        st.badge("No sound event", icon=":material/graphic_eq:", color="gray")
        st.warning("**Background only** — hiss, hum, rumble or room tone, no foreground sound event "
                   f"({background.get('share_of_windows', 1):.0%} of the windows). The labels below mean nothing here.")
    if ood.get("out_of_distribution"):
        st.badge("Out of distribution", icon=":material/warning:", color="red")
        st.error(f"**Out of distribution** — {rel} (higher = more unlike the training audio). "
                 "Do not trust this prediction.")
    elif pred.get("uncertain"):
        st.badge("Uncertain", icon=":material/help:", color="orange")
        st.warning(f"**Uncertain** — {'; '.join(map(str, reasons)) or 'low confidence'}. {rel}.")
    else:
        st.badge("In distribution", icon=":material/check_circle:", color="green")
        st.success(f"**In distribution and confident** — {rel}.")


def render(ctx: Context) -> None:
    st.title("Classify a sound")
    clip = _pick_clip(ctx)
    if clip is None:
        clip = current()
        if clip is None:
            st.info("Upload a file, record one, or pick an example clip to classify it.")
            return
        st.caption(f"Showing the last clip: **{clip.name}**")
    else:
        set_current(clip)
    st.audio(clip.data, format=clip.mime)
    n_classes = len((ctx.model or {}).get("classes") or range(10))
    top_k = st.slider("Top-k", 1, min(10, n_classes), value=min(5, n_classes), key="top_k") if n_classes > 1 else 1
    st.session_state["last_top_k"] = top_k  # the Inside page asks /explain with the same k (one call)
    if ctx.model is None:
        st.error(f"Cannot classify: {ctx.model_error}")
        return
    with st.spinner("Classifying…"):
        pred, err = results_for(ctx, clip, "predict", top_k)
    if err:
        st.error(err)
        return
    show_prediction(pred)
    with st.spinner("Asking the model what it saw…"):
        exp, exp_err = results_for(ctx, clip, "explain", top_k)
    if exp_err:
        st.warning(f"No view of the model's input: {exp_err}")
    else:
        show_input(exp)
    windows = pred.get("windows") or []
    if len(windows) > 1:
        st.subheader("Over time")
        st.caption(f"{len(windows)} windows of the model's clip length (50 % hop); the result above is "
                   f"the {pred.get('aggregate', 'aggregate of the windows')}.")
        st.plotly_chart(plots.window_timeline(windows, (pred.get("ood") or {}).get("threshold")),
                        key="timeline")


def show_prediction(pred: dict[str, Any]) -> None:
    top = pred.get("top_k") or []
    model = pred.get("model") or {}
    audio = pred.get("audio") or {}
    c1, c2, c3 = st.columns([2, 1, 1])
    if top:
        c1.metric("Prediction", str(top[0].get("label")), f"{float(top[0].get('probability', 0)):.1%} calibrated",
                  delta_color="off", delta_arrow="off")
    ood = pred.get("ood") or {}
    if isinstance(ood.get("score"), int | float):
        thr = ood.get("threshold")
        c2.metric(f"OOD score ({ood.get('score_name', 'energy')})", f"{ood['score']:.3f}",
                  f"threshold {thr:.3f}" if isinstance(thr, int | float) else "no threshold", delta_color="off",
                  delta_arrow="off")
    if audio:
        c3.metric("Audio", f"{float(audio.get('duration_s', 0)):.1f} s",
                  f"{audio.get('sample_rate', '?')} Hz {audio.get('format', '')}", delta_color="off",
                  delta_arrow="off")
    _ood_badge(pred)
    st.plotly_chart(plots.topk_bar(top, f"Top-{len(top)} (calibrated, T = {float(pred.get('temperature', 1.0)):.2f})"),
                    key="topk")
    st.caption(f"Model {model.get('name', '?')} ({model.get('arch', '?')}), version "
               f"`{str(model.get('version', ''))[:12]}`; {pred.get('timing_ms', '?')} ms on the server.")


def show_input(exp: dict[str, Any]) -> None:
    st.subheader("What the model saw")
    wave = exp.get("waveform") or {}
    mel = exp.get("logmel") or {}
    c1, c2 = st.columns(2)
    if wave.get("data"):
        # the API downsamples the waveform to <= 4000 points: points_per_second is the rate of `data`
        # (sample_rate is the model's audio rate); older servers: derive it from the duration
        n = len(wave["data"])
        rate = wave.get("points_per_second")
        if not isinstance(rate, int | float) or rate <= 0:
            dur = wave.get("duration_s")
            if not isinstance(dur, int | float) or dur <= 0:
                dur = (mel.get("frames", 0) * mel.get("hop_length", 0) / mel.get("sample_rate", 1)) if mel else 0
            rate = n / dur if dur else wave.get("sample_rate", 1)
        c1.plotly_chart(plots.waveform(wave["data"], rate, "Waveform (first window)"), key="wave")
    if mel.get("data"):
        c2.plotly_chart(plots.spectrogram(mel["data"], hop_length=mel.get("hop_length"),
                                          sample_rate=mel.get("sample_rate"),
                                          title=f"Log-mel input, {mel.get('n_mels', '?')} bands"),
                        key="logmel")
        st.caption(f"Exactly the tensor the network received: the bundle's front end, computed by the server "
                   f"({mel.get('sample_rate', '?')} Hz, hop {mel.get('hop_length', '?')}, "
                   f"{_hz(mel.get('f_min'))}–{_hz(mel.get('f_max'))} Hz).")


def _hz(value: Any) -> str:
    return f"{float(value):g}" if isinstance(value, int | float) else "?"
