"""Holds only the Streamlit script, because Streamlit puts the script's folder on ``sys.path``."""
