"""Registered toy experiments: one module per paper figure or claim, found by name.

Every module here whose name does not start with ``_`` is an experiment and must define:

- ``NAME`` (str, the registered name, e.g. ``"digits-influence"``) and ``DESCRIPTION`` (one line);
- ``Config``: a frozen dataclass with help text per field, a ``seed`` field, and a ``__post_init__`` that refuses
  bad values with ``ValueError``;
- ``Result``: a frozen dataclass holding ``config``, the arrays and ``summary: dict``;
- ``run(cfg) -> Result`` (pure: no I/O, seeded from ``cfg.seed`` only), ``save(result, out_dir)`` (metrics,
  ``summary.json``, figures) and ``plot(result) -> matplotlib.figure.Figure``.

The CLI (``python -m toykit.experiments``) and the app call the same three functions through
:func:`run_experiment`, which writes the run directory's ``config.json`` and ``env.json`` before any work.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Any

from toykit.runs import DEFAULT_RUNS_ROOT, new_run_dir

__all__ = ["registry", "experiment_names", "get_experiment", "run_experiment", "REQUIRED_ATTRIBUTES"]

REQUIRED_ATTRIBUTES = ("NAME", "DESCRIPTION", "Config", "Result", "run", "save", "plot")


def _check_module(module: ModuleType) -> None:
    """Raise TypeError naming the module when it does not follow the experiment contract."""
    missing = [attr for attr in REQUIRED_ATTRIBUTES if not hasattr(module, attr)]
    if missing:
        raise TypeError(f"experiment module {module.__name__} lacks {missing}; "
                        f"every experiment defines {list(REQUIRED_ATTRIBUTES)}")
    if not isinstance(module.NAME, str) or not module.NAME:
        raise TypeError(f"experiment module {module.__name__}: NAME must be a non-empty string, got {module.NAME!r}")
    for cls_name in ("Config", "Result"):
        cls = getattr(module, cls_name)
        if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):  # type: ignore[attr-defined]
            raise TypeError(f"experiment module {module.__name__}: {cls_name} must be a frozen dataclass")
    if "seed" not in {f.name for f in dataclasses.fields(module.Config)}:
        raise TypeError(f"experiment module {module.__name__}: Config has no `seed` field")


def _discover(package: ModuleType) -> dict[str, ModuleType]:
    """Import every non-underscore module of ``package`` and map its NAME to it."""
    found: dict[str, ModuleType] = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.ispkg:
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        _check_module(module)
        if module.NAME in found:
            raise TypeError(f"experiment name {module.NAME!r} is registered twice: by "
                            f"{found[module.NAME].__name__} and {module.__name__}")
        found[module.NAME] = module
    return found


def registry() -> dict[str, ModuleType]:
    """Return ``{NAME: module}`` for every experiment in this package, sorted by name."""
    import toykit.experiments as package

    found = _discover(package)
    return {name: found[name] for name in sorted(found)}


def experiment_names() -> list[str]:
    """Return the registered experiment names, sorted."""
    return list(registry())


def get_experiment(name: str) -> ModuleType:
    """Return the experiment module registered as ``name``; ValueError lists the known names."""
    experiments = registry()
    if name not in experiments:
        raise ValueError(f"unknown experiment {name!r}; known experiments: {sorted(experiments)}")
    return experiments[name]


def run_experiment(name: str, cfg: Any = None, out_dir: str | Path | None = None,
                   root: str | Path = DEFAULT_RUNS_ROOT) -> tuple[Any, Path]:
    """Run experiment ``name`` and write its run directory.

    ``config.json`` (first) and ``env.json`` are written before the run starts, so a crashed run still says what it
    was; then ``run(cfg)`` and ``save(result, run_dir)``.

    Args:
        name: a registered experiment name (see :func:`registry`).
        cfg: an instance of the experiment's ``Config``; ``None`` uses its defaults.
        out_dir: an explicit run directory (refused if it already holds a run); default ``root/<time>-<name>``.
        root: where default run directories are created.

    Returns:
        ``(result, run_dir)``.
    """
    module = get_experiment(name)
    if cfg is None:
        cfg = module.Config()
    if not isinstance(cfg, module.Config):
        raise ValueError(f"experiment {name!r} expects a {module.__name__}.Config, got {type(cfg).__name__}")
    with new_run_dir(cfg, name, out_dir=out_dir, root=root) as run_dir:  # a refused input leaves no folder
        result = module.run(cfg)
    module.save(result, run_dir)
    return result, run_dir
