"""Import boundaries between the packages (STYLE.md): toykit is pure, llm never imports app."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imported_roots(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("forbidden", ["llm", "app", "transformers", "streamlit", "tokenizers"])
def test_toykit_is_pure(forbidden):
    imported = _imported_roots("toykit")
    assert forbidden not in imported, f"toykit imports {forbidden} in {sorted(imported.get(forbidden, []))}"


def test_llm_never_imports_app():
    imported = _imported_roots("llm")
    assert "app" not in imported, f"llm imports app in {sorted(imported['app'])}"


def test_boundary_parser_sees_imports():
    # The checker itself must find imports that exist, or the tests above could never fail.
    assert "torch" in _imported_roots("toykit") or "numpy" in _imported_roots("toykit")
