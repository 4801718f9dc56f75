"""Altair chart builders shared by the pages: tidy DataFrame in, labelled chart out (no arithmetic here)."""

from __future__ import annotations

import altair as alt
import pandas as pd

__all__ = ["line_chart", "point_chart", "bar_chart", "heatmap", "PROBE_LABELS"]

# The paper's probe keys (../shared/data/NOTICE.md) with the paper's symbols, for legends.
PROBE_LABELS = {
    "chosen": "y+ (chosen)",
    "rejected": "y- (rejected)",
    "chosen_initial": "y_init (base-model sample)",
    "chosen_gptsemantic": "y+_gpts (semantic rephrase of y+)",
    "chosen_gptformat": "y+_gptf (format rephrase of y+)",
    "reject_gptsemantic": "y-_gpts (semantic rephrase of y-)",
    "reject_gptformat": "y-_gptf (format rephrase of y-)",
    "irr_train": "y+_{j!=u} (y+ of another prompt)",
    "irr_test": "y_test (held-out answer)",
    "irr_hum": "y_hum (unrelated sentence)",
    "random_permute": "y_urnd (y+ words shuffled)",
    "random_nonhum": "y_rnd (y_test words shuffled)",
    "argmax_teacher_forced": "teacher-forced argmax along y+",
    "greedy": "free-running greedy response",
}


# Legends below the plot in columns, never truncated: a tall legend beside a short chart was cut off.
_LEGEND = alt.Legend(orient="bottom", direction="vertical", columns=3, labelLimit=0, titleLimit=0, symbolLimit=0)
_DASH_LEGEND = alt.Legend(orient="bottom", direction="vertical", columns=3, labelLimit=0, titleLimit=0, symbolLimit=0,
                          symbolType="stroke", symbolStrokeWidth=2, symbolSize=400,
                          symbolStrokeColor="black")  # line samples in black, not coloured dots


def line_chart(data: pd.DataFrame, x: str, y: str, color: str, *, x_title: str, y_title: str, title: str = "",
               dash: str | None = None, log_x: bool = False, log_y: bool = False, color_title: str | None = None,
               dash_title: str | None = None, height: int = 320) -> alt.Chart:
    """Return a line chart of tidy ``data`` with labelled axes and a legend for ``color`` (and ``dash``)."""
    y_scale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    x_scale = alt.Scale(type="log") if log_x else alt.Scale()
    many = data[color].nunique() > 10 if color in data else False
    encoding = {
        "x": alt.X(x, type="quantitative", title=x_title, scale=x_scale),
        "y": alt.Y(y, type="quantitative", title=y_title, scale=y_scale),
        # 20 distinct colours when the 10 of the default scheme would repeat; every legend entry shown in full
        "color": alt.Color(color, type="nominal", title=color_title or color,
                           scale=alt.Scale(scheme="category20") if many else alt.Undefined, legend=_LEGEND),
        "tooltip": [c for c in (x, y, color, dash) if c],
    }
    if dash:
        encoding["strokeDash"] = alt.StrokeDash(dash, type="nominal", title=dash_title or dash, legend=_DASH_LEGEND)
    # fit-x: the width follows the page, the height is the plot's own (a "fit" height would shrink the plot to make
    # room for the legend below it)
    return alt.Chart(data, title=title).mark_line(point=True).encode(**encoding).properties(
        height=height, autosize=alt.AutoSizeParams(type="fit-x", contains="padding"))



def point_chart(data: pd.DataFrame, x: str, y: str, color: str, *, x_title: str, y_title: str, title: str = "",
                log_y: bool = False, color_title: str | None = None, height: int = 300) -> alt.Chart:
    """Return a scatter of tidy ``data`` (a log y axis works here, unlike bars that start at 0)."""
    y_scale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    return alt.Chart(data, title=title).mark_point(filled=True, size=30).encode(
        x=alt.X(x, type="quantitative", title=x_title),
        y=alt.Y(y, type="quantitative", title=y_title, scale=y_scale),
        color=alt.Color(color, type="nominal", title=color_title or color),
        tooltip=[c for c in (x, y, color) if c],
    ).properties(height=height)


def bar_chart(data: pd.DataFrame, x: str, y: str, color: str, *, x_title: str, y_title: str, title: str = "",
              offset: str | None = None, color_title: str | None = None, height: int = 300) -> alt.Chart:
    """Return a bar chart (bars side by side per ``offset`` when given) with labelled axes and a legend."""
    encoding = {
        "x": alt.X(x, type="ordinal", title=x_title),
        "y": alt.Y(y, type="quantitative", title=y_title),
        "color": alt.Color(color, type="nominal", title=color_title or color),
        "tooltip": [c for c in (x, y, color) if c],
    }
    if offset:
        encoding["xOffset"] = alt.XOffset(offset, type="nominal")
    return alt.Chart(data, title=title).mark_bar().encode(**encoding).properties(height=height)


def heatmap(data: pd.DataFrame, x: str, y: str, value: str, *, x_title: str, y_title: str, value_title: str,
            title: str = "", diverging: bool = True, size: int = 220, tooltip: tuple[str, ...] = ()) -> alt.Chart:
    """Return a heat map of ``value`` over (``x``, ``y``) cells; a diverging colour scale centred at 0 by default."""
    scale = alt.Scale(scheme="redblue", domainMid=0, reverse=True) if diverging else alt.Scale(scheme="viridis")
    return alt.Chart(data, title=title).mark_rect().encode(
        x=alt.X(x, type="ordinal", title=x_title),
        y=alt.Y(y, type="ordinal", title=y_title),
        color=alt.Color(value, type="quantitative", title=value_title, scale=scale),
        tooltip=[x, y, value, *tooltip],
    ).properties(width=size, height=size)
