"""Live: a recording streamed through the server's WebSocket ``/stream``, the window timeline
of the last minutes growing as the answers come, and the events as they close."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
import streamlit as st

from tympan.dashboard import plots
from tympan.dashboard.client import ApiError
from tympan.dashboard.state import Context
from tympan.dashboard.views.classify import _pick_clip

#: the timeline shows this much of the stream (the last minutes)
TIMELINE_S = 300.0


def _as_windows(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``/stream`` window messages in the shape of ``/predict``'s windows (for the timeline plot)."""
    ws = [m for m in msgs if m.get("type") == "window"]
    if ws:
        last = ws[-1]["end_s"]
        ws = [w for w in ws if w["end_s"] >= last - TIMELINE_S]
    return [{"start_s": w["start_s"], "end_s": w["end_s"], "ood_score": w["ood_score"],
             "out_of_distribution": w["out_of_distribution"],
             "top_k": [{"label": w["label"], "probability": w["probability"]}]} for w in ws]


def events_table(msgs: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [m["event"] for m in msgs if m.get("type") == "event"]
    cols = ["label", "start_s", "end_s", "peak_probability", "windows", "ood_windows", "background_windows"]
    return pd.DataFrame(rows, columns=cols) if rows else pd.DataFrame(columns=cols)


def render(ctx: Context) -> None:
    st.title("Listen live")
    st.caption("A recording sent as PCM over `WebSocket /stream` at about real time: each model window and each "
               "event comes back as it is classified (the events of `tympan listen` and `predict --format events`).")
    if ctx.client is None or ctx.model is None:
        st.warning("The API is not reachable: start it with `tympan serve` and check the sidebar.")
        return
    clip = _pick_clip(ctx)
    if clip is None:
        st.info("Upload a file or pick an example clip to stream it.")
        return
    speed = st.slider("Speed (x real time)", 1.0, 1.4, 1.4, 0.1, key="live_speed",
                      help="The server closes clients much faster than real time (a live source, not an upload).")
    if not st.button("Stream it", key="live_go", type="primary"):
        msgs = st.session_state.get("live_msgs")
        if not msgs:
            return
    else:
        try:
            y, sr = sf.read(io.BytesIO(clip.data), dtype="int16", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            st.error(f"cannot read {clip.name}: {exc}")
            return
        pcm = np.ascontiguousarray(y).astype("<i2").tobytes()
        chart, table = st.empty(), st.empty()
        msgs: list[dict[str, Any]] = []

        def show(m: dict[str, Any]) -> None:
            msgs.append(m)
            if m.get("type") == "event" or len(msgs) % 8 == 0:
                chart.plotly_chart(plots.window_timeline(_as_windows(msgs)), key=f"live_chart_{len(msgs)}")
                table.dataframe(events_table(msgs), hide_index=True)

        try:
            with st.spinner(f"streaming {len(y) / sr:.0f} s of audio"):
                ctx.client.stream(pcm, sr, channels=y.shape[1], speed=speed, on_message=show)
        except ApiError as exc:
            st.error(str(exc))
            return
        chart.empty()
        table.empty()
        st.session_state["live_msgs"] = msgs
    end = next((m for m in reversed(msgs) if m.get("type") == "end"), {})
    st.success(f"{end.get('windows', 0)} windows, {end.get('events', 0)} events over {end.get('audio_s', 0):.1f} s")
    st.plotly_chart(plots.window_timeline(_as_windows(msgs)), key="live_chart")
    st.subheader("Events")
    st.dataframe(events_table(msgs), hide_index=True)
