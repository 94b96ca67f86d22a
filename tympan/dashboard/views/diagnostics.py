"""Model diagnostics from ``GET /model`` → ``"diagnostics"`` (see :mod:`tympan.dashboard.reports`)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from tympan import figures
from tympan.contracts.ood import served_ood
from tympan.dashboard.reports import ContractError, parse_diagnostics
from tympan.dashboard.state import Context

NO_DIAGNOSTICS = ("This bundle has no held-out diagnostics yet; run `diagnose --bundle DIR` "
                  "to compute them and store them in the bundle.")


def render(ctx: Context) -> None:
    st.title("Model diagnostics")
    if ctx.model is None:
        st.error(f"Cannot read the model's diagnostics: {ctx.model_error}")
        return
    model = ctx.model
    c1, c2, c3 = st.columns(3)
    c1.metric("Classes", len(model.get("classes") or []))
    temp = model.get("temperature")
    c2.metric("Temperature", f"{float(temp):.3f}" if isinstance(temp, int | float) else "n/a")
    served = served_ood(model.get("ood"))  # the score /predict decides with, not the energy's threshold
    c3.metric(f"OOD threshold ({served.label} score)",
              f"{served.threshold:.3f}" if served.threshold is not None else "not fitted",
              help=f"OOD is decided by the {served.headline()}.")
    text = served.figures_text()
    st.caption(f"Out of distribution when the {served.headline()}" + (f": {text}." if text else "."))
    metrics = model.get("metrics") or {}
    if metrics:
        with st.expander("Metrics stored in the bundle", expanded=False):
            st.json(metrics)

    try:
        diag = parse_diagnostics(model.get("diagnostics"), model.get("classes"))
    except ContractError as exc:
        st.error(f"Cannot show this bundle's diagnostics: {exc}. Run `tympan calibrate --bundle DIR` "
                 "with this version to rewrite them.")
        return
    if diag is None:
        st.info(NO_DIAGNOSTICS)
        return
    if diag.evaluated_on:
        st.caption(f"Measured on: {diag.evaluated_on}" + (f" ({diag.n_clips} clips)" if diag.n_clips else ""))
    d1, d2, d3 = st.columns(3)
    if diag.accuracy is not None:
        d1.metric("Held-out accuracy", f"{diag.accuracy:.1%}")
    before, after = diag.reliability.get("before"), diag.reliability.get("after")
    if before is not None and before.ece is not None:
        d2.metric("ECE before scaling", f"{before.ece:.3f}")
    if after is not None and after.ece is not None:
        d3.metric("ECE after scaling", f"{after.ece:.3f}",
                  None if before is None or before.ece is None else f"{after.ece - before.ece:+.3f}",
                  delta_color="inverse")
    if diag.missing:
        st.caption("Not in this bundle's diagnostics: " + ", ".join(diag.missing) + ".")

    if diag.doc.confusion is not None:
        st.subheader("Confusion")
        norm = st.toggle("Normalise rows", value=True, key="cm_norm")
        st.plotly_chart(figures.confusion_heatmap(diag.doc.confusion, normalize=norm), key="confusion")
    if diag.most_confused:
        st.markdown("**Most-confused pairs**")
        pairs = pd.DataFrame(diag.most_confused)
        if "reverse_count" in pairs:  # unordered pairs, counted both ways
            pairs = pairs.rename(columns={"true": "class A", "predicted": "class B", "count": "A predicted as B",
                                          "reverse_count": "B predicted as A"})
        st.dataframe(pairs, hide_index=True)
    if diag.reliability and diag.doc.reliability is not None:
        st.subheader("Calibration")
        st.plotly_chart(figures.reliability_diagram(diag.doc.reliability), key="reliability")
        st.caption("Below the diagonal the model is over-confident, above it under-confident. Temperature scaling "
                   "divides the logits by one fitted number T; it changes confidence, never the ranking.")
    if diag.per_class_accuracy:
        st.subheader("Per-class accuracy")
        st.plotly_chart(figures.per_class_accuracy(diag.per_class_accuracy), key="per_class")
    if diag.ood_histograms and diag.doc.ood is not None:
        st.subheader("Out-of-distribution scores")
        if not served.decides_by_energy:
            st.caption(f"These held-out figures are of the energy score (threshold {diag.doc.ood.threshold:.3f}), "
                       f"kept for comparison: the {served.label} decides OOD (its figures are above).")
        st.plotly_chart(figures.ood_histograms(diag.doc.ood), key="ood_hist")
        if diag.ood_metrics:
            st.dataframe(pd.DataFrame([diag.ood_metrics]), hide_index=True)
