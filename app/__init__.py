"""app: the Streamlit user interface (widgets -> library call -> render). Run it with ``streamlit run app/Home.py``.

Pages (``app/pages``), each a thin view over a library computation:

1. Squeezing explorer -> ``toykit.experiments.squeeze_explorer`` (``toykit.squeeze``)
2. One-step decomposition -> ``toykit.experiments.one_step`` (``toykit.decomposition``)
3. Loss residuals -> ``toykit.experiments.loss_residuals`` ("residuals", Figure 2)
4. Trajectories and the phase diagram -> ``toykit.experiments.trajectories`` / ``phase_diagram``
5. Digits influence -> ``toykit.experiments.digits_influence`` (Figure 1)
6. LLM runs -> ``llm.runs`` (run directories, tidy metrics, claims, the paper's metric logs)

``app.charts`` holds the Altair chart builders the pages share. The app imports only streamlit, plotting and
data-frame libraries, toykit, llm and the stdlib, and computes nothing itself (``tests/app/test_app_boundaries.py``).
"""
