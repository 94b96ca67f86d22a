"""Entry for ``streamlit run dashboard`` from a checkout: the app lives in ``tympan.dashboard``."""

from tympan.dashboard.app import main

main()
