"""Streamlit dashboard over the live tympan HTTP API: classify, look inside, compare, diagnose.

Run it from a checkout with ``streamlit run dashboard`` or from an install with
``tympan dashboard [--api-url URL] [--port N]``. The app talks to the API only over HTTP
(:mod:`tympan.dashboard.client`); the training-data views read an ESC-50-layout folder
(``$TYMPAN_ESC50_DIR`` or the sidebar) through :mod:`tympan.dashboard.features_table`.
"""

from pathlib import Path

#: The Streamlit script that ``tympan dashboard`` runs; like ``dashboard/streamlit_app.py`` in a
#: checkout it only calls :func:`tympan.dashboard.app.main`.
APP_PATH = Path(__file__).resolve().parent / "entry" / "streamlit_app.py"

__all__ = ["APP_PATH"]
