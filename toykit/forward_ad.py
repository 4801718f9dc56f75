"""torch.func's forward-mode transforms, serialised across threads.

torch keeps its forward-AD dual levels in one process-wide stack, so two threads inside ``torch.func.jvp`` at once
corrupt each other's level ("Trying to access a forward AD level with an invalid index"). Streamlit runs
overlapping reruns of a page in separate threads, so every forward-mode call in toykit goes through :func:`jvp`,
which holds one re-entrant lock for the duration of the transform. Results are unchanged; only concurrent
forward-mode work waits.
"""

from __future__ import annotations

import threading

import torch.func

__all__ = ["jvp", "FORWARD_AD_LOCK"]

#: held while a forward-mode transform runs (re-entrant: a jvp inside a vmapped jvp takes it again).
FORWARD_AD_LOCK = threading.RLock()


def jvp(func, primals, tangents, *args, **kwargs):
    """``torch.func.jvp`` under :data:`FORWARD_AD_LOCK` (same arguments and results)."""
    with FORWARD_AD_LOCK:
        return torch.func.jvp(func, primals, tangents, *args, **kwargs)
