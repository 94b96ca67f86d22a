"""Inside the CNN: each stage's feature maps and the saliency map over the spectrogram (/explain)."""

from __future__ import annotations

import streamlit as st

from tympan.dashboard import plots
from tympan.dashboard.state import Context, current, results_for


def render(ctx: Context) -> None:
    st.title("Inside the CNN")
    clip = current()
    if clip is None:
        st.info("No clip yet: classify one on the **Classify** page (upload, record or pick an example), "
                "then come back here.")
        return
    st.caption(f"Clip: **{clip.name}** — the first window the model saw.")
    if ctx.model is None:
        st.error(f"Cannot ask the model: {ctx.model_error}")
        return
    n_classes = len(ctx.model.get("classes") or []) or 1
    top_k = max(1, min(int(st.session_state.get("last_top_k", 3)), n_classes))
    with st.spinner("Asking the model what it saw…"):
        exp, err = results_for(ctx, clip, "explain", top_k)
    if err:
        st.error(err)
        return
    mel = exp.get("logmel") or {}
    sal = exp.get("saliency") or {}
    st.subheader("Where it looked")
    if sal.get("method") == "none":
        st.warning("No gradient reaches the last stage for this input, so there is no saliency map.")
    elif sal.get("data") and mel.get("data"):
        st.plotly_chart(plots.saliency_overlay(mel["data"], sal["data"], hop_length=mel.get("hop_length"),
                                               sample_rate=mel.get("sample_rate"),
                                               title=f"{sal.get('method', 'saliency')}"
                                                     + (f" ({sal['stage']})" if sal.get("stage") else "")
                                                     + f" for '{sal.get('target', '?')}' over the log-mel input"),
                        key="saliency")
        st.caption("Bright = regions whose change would most change the score of the target class. "
                   "Saliency shows what the network used, not what the sound *is*.")
    else:
        st.warning("The API returned no saliency map for this clip.")
    stages = exp.get("feature_maps") or []
    st.subheader("Feature maps, stage by stage")
    if not stages:
        st.warning("The API returned no feature maps for this model.")
        return
    st.caption("Each stage's mean activation over channels, then its most active channels "
               "(frequency up, time to the right; deeper stages are coarser).")
    for i, stage in enumerate(stages):
        st.plotly_chart(plots.feature_maps(stage), key=f"fmap-{i}")
