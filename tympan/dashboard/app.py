"""The tympan dashboard (Streamlit). Run: ``streamlit run dashboard`` or ``tympan dashboard``.

Six pages over the live HTTP API (``docs/api.md``): Classify, Inside the CNN, Acoustic
features, Model diagnostics, Field drift and Listen live (``WebSocket /stream``). The sidebar holds the API URL (default
``$TYMPAN_API_URL`` or ``http://127.0.0.1:8000``) and the ESC-50 folder
(``$TYMPAN_ESC50_DIR``); when the API is down every page says so and stays usable.
"""

from __future__ import annotations

import os

import streamlit as st

from tympan.dashboard.client import ApiClient, ApiError, default_api_url
from tympan.dashboard.state import Context, default_esc50_dir, fetch_model, valid_esc50_dir

PAGES = {
    "classify": "Classify",
    "inside": "Inside the CNN",
    "acoustic": "Acoustic features",
    "diagnostics": "Model diagnostics",
    "drift": "Field drift",
    "live": "Listen live",
}


def _sidebar() -> tuple[str, Context]:
    sb = st.sidebar
    sb.title("tympan")
    sb.caption("Environmental sound classification that tells you when to distrust it.")
    if "page" not in st.session_state:
        wanted = st.query_params.get("page", "classify")
        st.session_state["page"] = wanted if wanted in PAGES else "classify"
    page = sb.radio("Page", list(PAGES), format_func=PAGES.__getitem__, key="page")
    st.query_params["page"] = page

    api_url = sb.text_input("API URL", value=default_api_url(), key="api_url",
                            help="The tympan HTTP API (`tympan serve --bundle DIR`). Default: $TYMPAN_API_URL.")
    token = sb.text_input("API key", value=os.environ.get("TYMPAN_API_KEY", ""), type="password", key="api_key",
                          help="Only if the server was started with TYMPAN_API_KEY (sent as a bearer token).")
    client, model, error = None, None, None
    try:
        client = ApiClient(api_url, token=token or None)
        model, error = fetch_model(client.base_url, token or None)
    except ApiError as exc:
        error = str(exc)
    if model is not None:
        classes = model.get("classes") or []
        version = str(model.get("version") or "")[:10]
        sb.success(f"API up: **{model.get('name', 'model')}** ({model.get('arch', '?')}), "
                   f"{len(classes)} classes, version `{version}`")
    else:
        sb.error(f"API unavailable: {error}")
        if sb.button("Retry connection"):
            fetch_model.clear()
            st.rerun()

    esc50 = sb.text_input("ESC-50 folder", value=default_esc50_dir(), key="esc50_dir",
                          help="An ESC-50-layout folder (meta/esc50.csv + audio/) for example clips and the "
                               "training-data views. Default: $TYMPAN_ESC50_DIR. Empty: a small generated set.")
    if esc50 and not valid_esc50_dir(esc50):
        sb.warning(f"{esc50}: not an ESC-50 folder (meta/esc50.csv missing); using the generated set")
    return page, Context(api_url=api_url, client=client, model=model, model_error=error,
                         esc50_dir=esc50 if valid_esc50_dir(esc50) else "")


def main() -> None:
    st.set_page_config(page_title="tympan dashboard", page_icon="🔊", layout="wide")
    page, ctx = _sidebar()
    from tympan.dashboard.views import acoustic, classify, diagnostics, drift, inside, live

    views = {"classify": classify, "inside": inside, "acoustic": acoustic, "diagnostics": diagnostics,
             "drift": drift, "live": live}
    views[page].render(ctx)

