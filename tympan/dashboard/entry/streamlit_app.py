"""The script ``tympan dashboard`` hands to ``streamlit run`` (the app is :mod:`tympan.dashboard.app`).

It sits alone in its folder because Streamlit puts the script's folder on ``sys.path``: next to
``client.py`` or ``state.py`` it would make those importable as top-level modules.
"""

from tympan.dashboard.app import main

main()
