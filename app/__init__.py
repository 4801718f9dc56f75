"""app: the Streamlit user interface (widgets -> library call -> render)."""
