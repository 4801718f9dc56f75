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


def _llm_module_graph() -> dict[str, set[str]]:
    """Module -> the llm modules it imports (function-local imports included), e.g. 'llm.cli' -> {'llm.config'}."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "llm").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        deps = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("llm."):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("llm."))
    return graph


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


def test_llm_has_no_import_cycles():
    # The package __init__ only re-exports lazily; every other module must sit in a one-way order.
    graph = {name: deps for name, deps in _llm_module_graph().items() if name != "llm"}
    assert "llm.cli" in graph and graph["llm.cli"], "the graph builder found no imports: it could not fail"
    cycles = sorted(name for name in graph if _reaches(graph, name, name))
    assert not cycles, f"llm modules that import themselves through others: {cycles}"


def test_engine_never_imports_validation():
    # A newcomer reading the finetuning engine must not meet the synthetic world (validation builds on the engine).
    graph = _llm_module_graph()
    engine = [name for name in graph if not name.startswith("llm.validation") and name not in ("llm", "llm.cli")]
    offenders = sorted(name for name in engine if any(d.startswith("llm.validation") for d in graph[name]))
    assert not offenders, f"engine modules importing llm.validation: {offenders}"
