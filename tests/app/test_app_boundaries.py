"""The app is UI only: it imports streamlit, plotting/data-frame libraries, toykit, llm and the stdlib, and does no
numeric computation of its own (no numeric imports, no arithmetic, no numeric reductions); it caches with
st.cache_data / st.cache_resource, never the deprecated st.cache."""

import ast
import sys
from pathlib import Path

import pytest

APP_DIR = Path(__file__).resolve().parents[2] / "app"
ALLOWED_ROOTS = {"streamlit", "altair", "matplotlib", "pandas", "toykit", "llm", "app", "__future__"}
NUMERIC_STDLIB = {"math", "cmath", "statistics", "decimal", "fractions", "random", "numbers", "array"}
ARITHMETIC = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.MatMult)
NUMERIC_CALLS = {"sum", "mean", "std", "var", "cumsum", "cumprod", "diff", "exp", "log", "log10", "sqrt", "dot",
                 "matmul", "einsum", "softmax", "log_softmax", "argmax", "argmin", "max", "min", "abs", "round",
                 "pow", "divmod", "prod", "clip", "pct_change", "corr", "sub", "add", "mul", "div", "truediv"}
EXPECTED_PAGES = ["1_Squeezing_explorer.py", "2_One_step_decomposition.py", "3_Loss_residuals.py",
                  "4_Trajectories_and_phase_diagram.py", "5_Digits_influence.py", "6_LLM_runs.py",
                  "7_Explain_a_run.py", "8_Online_RL_groups.py"]


def _is_text(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def violations(source: str, filename: str = "<app>") -> list[str]:
    """List every import outside the allowed set and every numeric operation in ``source``, with its line."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            roots = [node.module.split(".")[0]] if node.level == 0 and node.module else []
        else:
            roots = []
        for root in roots:
            stdlib = root in sys.stdlib_module_names and root not in NUMERIC_STDLIB
            if root not in ALLOWED_ROOTS and not stdlib:
                found.append(f"{where}: imports {root}")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ARITHMETIC):
            text_join = isinstance(node.op, (ast.Add, ast.Mod)) and (_is_text(node.left) or _is_text(node.right))
            if not text_join:
                found.append(f"{where}: arithmetic {type(node.op).__name__}")
        if isinstance(node, ast.AugAssign) and isinstance(node.op, ARITHMETIC):
            found.append(f"{where}: arithmetic {type(node.op).__name__}=")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
                and not isinstance(node.operand, ast.Constant):
            found.append(f"{where}: unary {type(node.op).__name__}")
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in NUMERIC_CALLS:
                found.append(f"{where}: numeric call {name}()")
            if isinstance(func, ast.Attribute) and func.attr == "cache" and getattr(func.value, "id", "") == "st":
                found.append(f"{where}: deprecated st.cache")
        if isinstance(node, ast.Attribute) and node.attr == "cache" and getattr(node.value, "id", "") == "st":
            found.append(f"{where}: deprecated st.cache")
    return found


def _app_files() -> list[Path]:
    return sorted(APP_DIR.rglob("*.py"))


def test_all_six_pages_exist():
    assert (APP_DIR / "Home.py").exists()
    assert sorted(p.name for p in (APP_DIR / "pages").glob("*.py")) == EXPECTED_PAGES


@pytest.mark.parametrize("path", _app_files(), ids=lambda p: str(p.relative_to(APP_DIR)))
def test_app_file_is_ui_only(path):
    assert violations(path.read_text(), str(path.relative_to(APP_DIR.parent))) == []


@pytest.mark.parametrize("snippet, expected", [
    ("import numpy as np", "imports numpy"),
    ("import torch.nn", "imports torch"),
    ("from math import log", "imports math"),
    ("from sklearn.metrics import r2_score", "imports sklearn"),
    ("y = pi * 2", "arithmetic Mult"),
    ("d = after - before", "arithmetic Sub"),
    ("ratio = a / b", "arithmetic Div"),
    ("total += x", "arithmetic Add="),
    ("y = -x", "unary USub"),
    ("m = df['value'].mean()", "numeric call mean()"),
    ("s = sum(values)", "numeric call sum()"),
    ("@st.cache\ndef f():\n    pass", "deprecated st.cache"),
])
def test_checker_catches_numeric_code(snippet, expected):
    # The checker must flag what it forbids, or the test above could never fail.
    assert any(expected in v for v in violations(snippet)), violations(snippet)


@pytest.mark.parametrize("snippet", [
    "import streamlit as st\nimport altair as alt\nfrom pathlib import Path\nfrom toykit import squeeze",
    "label = 'log pi ' + name",
    "msg = f'{a}' + ' nats'",
    "x = -1.0",
    "@st.cache_data\ndef f(n):\n    return n",
])
def test_checker_allows_ui_code(snippet):
    assert violations(snippet) == []
