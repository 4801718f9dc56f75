"""Read, summarise and plot a run's attribution (``explain/`` of ``llm.explain``), with a forecast overlaid.

Curves are cumulative from the run's start and averaged over the attributed prompts of each probe type, in nats of
SUMMED log-probs (the argmax is the TEACHER-FORCED argmax along y+): measured = log pi_t - log pi_0, predicted =
the sum over steps of the first-order changes, one stacked band per loss term, residual = measured - predicted.
A forecast (``llm.forecast``, the run predicted from the kernel at the start) is compared on the probe means over
the same prompts as the attribution (the per-prompt arrays probes/step_*.npz of both runs), and "parts" at the first evaluation where |forecast - real| exceeds ``tolerance`` times
the largest movement of any probe's real curve (one scale per run, so a probe that barely moves is not flagged for
a gap far below the run's own dynamics).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from llm.runs import read_run_metrics
from toykit.runs import read_json

ARGMAX_PROBE = "argmax_teacher_forced"  # llm.probes.ARGMAX_PROBE (not imported: this module reads files, no torch)

__all__ = ["Explanation", "load_explanation", "explanation_table", "format_explanation", "forecast_comparison",
           "plot_explanation", "cost_report", "add_explain_arguments", "run_explain_command",
           "list_explained_runs", "list_forecast_runs", "pair_tables", "attribution_sentences", "attributed_prompts",
           "summary_line", "attribution_sentence"]


@dataclasses.dataclass(frozen=True)
class Explanation:
    """A run's attribution, reduced to probe-type means of cumulative curves.

    Attributes:
        probe_types: T probe types (first-seen order); terms: K loss terms (the optimizer's rounding is inside
            the last one).
        steps: (W+1,) optimizer step 0 and the last step of each of the W attribution windows (0..S when the
            window is one step).
        measured, predicted: (T, W+1) cumulative mean change of the summed log-prob, 0 at step 0.
        contributions: (T, K, W+1) cumulative mean change due to each term.
        meta: the saved meta.json (optimizer, loss, per-step fit, seconds).
    """

    run_dir: Path
    probe_types: tuple[str, ...]
    terms: tuple[str, ...]
    steps: np.ndarray
    measured: np.ndarray
    predicted: np.ndarray
    contributions: np.ndarray
    meta: dict

    @property
    def residual(self) -> np.ndarray:
        """(T, S+1) measured minus predicted, cumulative."""
        return self.measured - self.predicted


def load_explanation(run_dir: str | Path) -> Explanation:
    """Read ``run_dir/explain`` written by an ``--explain-prompts N`` run.

    Raises:
        ValueError: the folder is missing (the run was trained without --explain-prompts).
    """
    run_dir = Path(run_dir)
    folder = run_dir / "explain"
    if not (folder / "attribution.npz").exists() or not (folder / "meta.json").exists():
        raise ValueError(f"{folder} holds no attribution: train with --explain-prompts N (e.g. 16) to record one")
    meta = read_json(folder / "meta.json")
    saved = np.load(folder / "attribution.npz")
    values, contrib = saved["values"], saved["contributions"]  # (S+1, N_o), (S, K, N_o)
    kinds = np.asarray(meta["probe_types"])
    if values.shape[1] != kinds.size or contrib.shape[1] != len(meta["terms"]):
        raise ValueError(f"{folder}: arrays {values.shape}, {contrib.shape} do not match meta.json's "
                         f"{kinds.size} observed rows and {len(meta['terms'])} terms")
    types = tuple(dict.fromkeys(meta["probe_types"]))
    zero = np.zeros((1,) + contrib.shape[1:])
    cum = np.concatenate([zero, np.cumsum(contrib, axis=0)])  # (S+1, K, N_o)
    measured = values - values[:1]
    mean = lambda a, t: a[..., kinds == t].mean(axis=-1)  # noqa: E731  mean over the prompts of type t
    contributions = np.stack([mean(cum, t).T for t in types])  # (T, K, S+1)
    steps = np.concatenate([[0], saved["steps"]]).astype(int)  # step 0, then the last step of every window
    return Explanation(run_dir, types, tuple(meta["terms"]), steps,
                       np.stack([mean(measured, t) for t in types]), contributions.sum(axis=1), contributions, meta)


def explanation_table(expl: Explanation) -> pd.DataFrame:
    """One row per probe type: total measured, predicted, residual and each term's share (nats, summed log-prob)."""
    rows = []
    for i, probe in enumerate(expl.probe_types):
        row = {"probe": probe, "measured": expl.measured[i, -1], "predicted": expl.predicted[i, -1],
               "residual": expl.residual[i, -1]}
        row.update({term: expl.contributions[i, k, -1] for k, term in enumerate(expl.terms)})
        rows.append(row)
    return pd.DataFrame(rows)


def format_explanation(expl: Explanation) -> str:
    """The table as text plus one sentence per probe naming the term that moved it most."""
    meta = expl.meta
    every = int(meta.get("explain_every", 1))
    window = "per-step" if every == 1 else f"per-window ({meta['windows']} windows of {every} steps)"
    lines = [f"{expl.run_dir}: {meta['loss']} with {meta['optimizer']}, {meta['steps']} steps, "
             f"{meta['num_prompts']} prompts attributed; {window} r(predicted, measured) median "
             f"{_number(meta['median_step_correlation'], '.4f')}, cumulative relative error "
             f"{_number(meta['relative_error'], '.3f')}",
             "change of the summed log-prob from step 0 (nats, mean over prompts):"]
    table = explanation_table(expl)
    lines.append(table.to_string(index=False, float_format=lambda v: f"{v:+.3f}"))
    lines += [f"- {sentence}" for sentence in attribution_sentences(expl)]
    corr = meta.get("pair_rank_correlations")
    if corr:
        lines.append(f"pair diagnostics of the first {meta['num_pairs']} training pairs at the start (Spearman rank "
                     f"correlations across pairs; entk_delta_chosen = the kernel's one-step change of y+ under DPO):")
        lines.append(pd.DataFrame(corr).to_string(float_format=lambda v: f"{v:+.2f}"))
    return "\n".join(lines)


def _number(value, spec: str) -> str:
    """``value`` formatted, or "n/a" when the record has none (null in meta.json: no step moved any probe, e.g. an RL
    run whose groups all tied, so no correlation or relative error exists)."""
    if value is None or not np.isfinite(value):
        return "n/a (no probe moved)"
    return format(value, spec)


def attribution_sentence(label: str, measured: float, predicted: float, contributions: dict[str, float]) -> str:
    """One sentence: how far ``label`` moved (nats) and which term did it, or which outweighed which.

    ``contributions`` maps each loss term to its share of the predicted change (the optimizer's rounding is
    inside the last term, meta.json: remainder_folded_into).
    """
    parts = sorted(((t, float(v)) for t, v in contributions.items()), key=lambda tv: -abs(tv[1]))
    text = f"{label} {'rose' if measured > 0 else 'fell'} by {abs(measured):.3f} nats (predicted {predicted:+.3f})"
    if len(parts) > 1 and parts[0][1] * parts[1][1] < 0:
        (t0, v0), (t1, v1) = parts[:2]
        return text + f": the {t0} ({v0:+.3f}) outweighed the {t1} ({v1:+.3f}) by {abs(v0 + v1):.3f}"
    return text + f": because of the {parts[0][0]} ({parts[0][1]:+.3f})"


def attribution_sentences(expl: Explanation) -> list[str]:
    """One sentence per probe type: how far it moved and which term did it (or which outweighed which)."""
    return [attribution_sentence(row["probe"], row["measured"], row["predicted"],
                                 {t: row[t] for t in expl.terms})
            for _, row in explanation_table(expl).iterrows()]


def attributed_prompts(run_dir: str | Path) -> np.ndarray | None:
    """(n,) the probe prompts ``run_dir``'s attribution observed (explain/meta.json), or None when it has none."""
    meta = Path(run_dir) / "explain" / "meta.json"
    return np.unique(np.asarray(read_json(meta)["prompts"], dtype=int)) if meta.exists() else None


def summary_line(expl: Explanation) -> str:
    """One line: loss, optimizer, steps and prompts, and the attribution sentences of y+, y- and the argmax."""
    sentences = dict(zip(expl.probe_types, attribution_sentences(expl)))
    keys = [p for p in ("chosen", "rejected", ARGMAX_PROBE) if p in sentences] or list(sentences)[:2]
    meta = expl.meta
    return (f"{meta['loss']} with {meta['optimizer']}, {meta['steps']} steps, {meta['num_prompts']} prompts "
            f"attributed: " + "; ".join(sentences[k] for k in keys))


def _probe_means(run_dir: Path, prompts: np.ndarray | None = None) -> pd.DataFrame:
    """Probe type x evaluation step: the mean summed log-prob over all probe prompts (metrics.jsonl), or over
    ``prompts`` only (the per-prompt arrays probes/step_*.npz the engine writes at every evaluation)."""
    if prompts is None:
        table = read_run_metrics(run_dir)
        table = table[(table["statistic"] == "logp_sum") & table["probe"].notna() & (table["probe"] != "train")]
        return table.groupby(["probe", "step"])["value"].mean().unstack("step")  # probe x step
    files = sorted((run_dir / "probes").glob("step_*.npz"))
    if not files:
        raise ValueError(f"{run_dir / 'probes'} holds no per-prompt probe arrays (step_*.npz): cannot average the "
                         f"probes over the attributed prompts {prompts.tolist()}")
    columns = {}
    for path in files:
        with np.load(path) as arrays:
            sums = {key.rsplit("/", 1)[0]: arrays[key] for key in arrays.files if key.endswith("/logp_sum")}
        short = [p for p, v in sums.items() if v.shape[0] <= prompts.max()]
        if short:
            raise ValueError(f"{path}: probe {short[0]} has {sums[short[0]].shape[0]} prompts, fewer than the "
                             f"attributed prompts {prompts.tolist()} need (a different probe set?)")
        columns[int(path.stem.removeprefix("step_"))] = {p: _finite_mean(v[prompts]) for p, v in sums.items()}
    return pd.DataFrame(columns).sort_index(axis=1)  # probe x step


def _finite_mean(values: np.ndarray) -> float:
    """Mean of the finite entries (NaN marks a prompt without that probe response), NaN when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def forecast_comparison(run_dir: str | Path, forecast_dir: str | Path, tolerance: float = 0.15,
                        prompts: np.ndarray | None | str = "attributed") -> pd.DataFrame:
    """Per probe type and shared evaluation step: real and forecast mean summed log-prob, and where they part.

    Args:
        prompts: the probe prompts both means are taken over: "attributed" (the default) the prompts of the run's
            attribution when it has one (so the curves compare with ``load_explanation``'s), else all of them; an
            array of prompt indices; None for all (the means of metrics.jsonl).

    Returns:
        rows (probe, step, real, forecast, gap, parted): parted is True from the first step where
        |forecast - real| > tolerance x the largest movement max_t |real_t - real_0| of any probe, on.
        ``attrs["prompts"]`` holds the prompt indices used (None: all).
    """
    if isinstance(prompts, str):
        if prompts != "attributed":
            raise ValueError(f"prompts must be 'attributed', None or prompt indices, got {prompts!r}")
        prompts = attributed_prompts(run_dir)
    prompts = None if prompts is None else np.asarray(prompts, dtype=int)
    real, fore = _probe_means(Path(run_dir), prompts), _probe_means(Path(forecast_dir), prompts)
    steps = [s for s in real.columns if s in fore.columns]
    probes = [p for p in real.index if p in fore.index]
    if not steps or not probes:
        raise ValueError(f"{run_dir} and {forecast_dir} share no evaluation step or probe: same config?")
    moved = real.loc[probes, steps].to_numpy(float)
    scale = max(float(np.nanmax(np.abs(moved - moved[:, :1]))), 1e-12)  # the largest movement of any probe
    rows = []
    for probe in probes:
        r, f = real.loc[probe, steps].to_numpy(float), fore.loc[probe, steps].to_numpy(float)
        parted = np.maximum.accumulate(np.abs(f - r) > tolerance * scale)
        rows += [{"probe": probe, "step": int(s), "real": r[j], "forecast": f[j], "gap": f[j] - r[j],
                  "parted": bool(parted[j])} for j, s in enumerate(steps)]
    out = pd.DataFrame(rows)
    out.attrs["prompts"] = None if prompts is None else prompts.tolist()
    return out


def plot_explanation(expl: Explanation, forecast: pd.DataFrame | None = None, columns: int = 4):
    """Return a Figure: per probe type the measured and predicted curves over stacked term contributions.

    With ``forecast`` (``forecast_comparison``) the forecast's change from step 0 is overlaid (red) and the step
    where it parts from the real run is marked; it must average the same prompts as the attribution.

    Raises:
        ValueError: ``forecast`` averages other probe prompts than the attribution (its ``attrs["prompts"]``).
    """
    import matplotlib.pyplot as plt

    if forecast is not None and "prompts" in forecast.attrs:
        mine = np.unique(np.asarray(expl.meta["prompts"], dtype=int)).tolist()
        if forecast.attrs["prompts"] != mine:
            used = "all probe prompts" if forecast.attrs["prompts"] is None else f"prompts {forecast.attrs['prompts']}"
            raise ValueError(f"the forecast comparison averages {used}, the attribution prompts {mine}: "
                             f"call forecast_comparison with prompts='attributed'")

    n = len(expl.probe_types)
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for i, probe in enumerate(expl.probe_types):
        ax = axes[i // cols][i % cols]
        for sign in (1, -1):  # positive and negative contributions stacked apart
            base = np.zeros_like(expl.steps, dtype=float)
            for k, term in enumerate(expl.terms):
                part = np.where(sign * expl.contributions[i, k] > 0, expl.contributions[i, k], 0.0)
                ax.fill_between(expl.steps, base, base + part, color=colours(k), alpha=0.35, lw=0,
                                label=term if sign == 1 and i == 0 else None)
                base = base + part
        ax.plot(expl.steps, expl.measured[i], "k-", lw=1.4, label="measured" if i == 0 else None)
        ax.plot(expl.steps, expl.predicted[i], "k--", lw=1.0, label="predicted (sum of terms)" if i == 0 else None)
        if forecast is not None and probe in set(forecast["probe"]):
            f = forecast[forecast["probe"] == probe]
            ax.plot(f["step"], f["forecast"] - f["real"].iloc[0], "r:", lw=1.4,
                    label="forecast (kernel at start)" if i == 0 else None)
            if f["parted"].any():
                ax.axvline(int(f.loc[f["parted"], "step"].iloc[0]), color="r", lw=0.8, alpha=0.6)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(probe, fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.set_ylabel("Delta log pi (summed, nats)", fontsize=8)
        ax.tick_params(labelsize=7)
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.legend(loc="lower center", ncol=min(6, len(expl.terms) + 3), fontsize=7, frameon=False)
    fig.suptitle(f"{expl.meta['loss']} / {expl.meta['optimizer']}: what moved each probe (mean over "
                 f"{expl.meta['num_prompts']} prompts)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    return fig


def cost_report(run_dir: str | Path, forecast_dir: str | Path | None = None) -> dict:
    """Seconds of the run, of its attribution hook and of a forecast, and their multiples of the plain run.

    The plain run is the run's own train + probe seconds minus the attribution's (which ran inside its steps); the
    forecast counts its own train + probe seconds (its loop; setup such as a tokenizer is left out of both).
    """
    run_dir = Path(run_dir)
    summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").exists() else {}
    total = (summary.get("train_seconds") or 0.0) + (summary.get("probe_seconds") or 0.0)
    meta_path = run_dir / "explain" / "meta.json"
    attribution = read_json(meta_path)["seconds"] if meta_path.exists() else 0.0
    plain = max(total - attribution, 1e-12)
    out = {"run_seconds": total, "attribution_seconds": attribution, "plain_run_seconds": plain,
           "run_with_attribution_x": total / plain}
    if forecast_dir is not None:
        fcost = read_json(Path(forecast_dir) / "forecast.json")
        loop = (fcost.get("train_seconds") or 0.0) + (fcost.get("probe_seconds") or 0.0)
        out.update(forecast_seconds=loop, forecast_x=loop / plain)
    return out


def add_explain_arguments(parser) -> None:
    """The ``python -m llm explain`` options."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run trained with --explain-prompts N")
    parser.add_argument("--forecast", metavar="DIR", default=None,
                        help="a `python -m llm forecast` run of the same config: overlaid, and where it parts marked")
    parser.add_argument("--tolerance", type=float, default=0.15,
                        help="the forecast parts from the run where |forecast - real| > tolerance x the largest "
                             "movement of any probe (default 0.15)")
    parser.add_argument("--figure", metavar="PATH", default=None,
                        help="where to write the figure (default RUN_DIR/explain/explain.png)")
    parser.add_argument("--dpi", type=int, default=110, help="resolution of the figure (default 110)")


def run_explain_command(ns) -> int:
    """Print the attribution table (and the forecast's parting points and costs), write the figure."""
    try:
        expl = load_explanation(ns.run_dir)
        comparison = forecast_comparison(ns.run_dir, ns.forecast, ns.tolerance) if ns.forecast else None
        cost = cost_report(ns.run_dir, ns.forecast)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}")
        return 2
    print(format_explanation(expl))
    if comparison is not None:
        used = comparison.attrs.get("prompts")
        over = "all probe prompts" if used is None else f"the {len(used)} attributed prompts"
        print(f"forecast {ns.forecast} (means over {over}; tolerance {ns.tolerance:g} x the largest movement):")
        for probe, rows in comparison.groupby("probe", sort=False):
            last = rows.iloc[-1]
            parted = rows[rows["parted"]]
            where = f"parts at step {int(parted['step'].iloc[0])}" if len(parted) else "tracks the run throughout"
            print(f"- {probe}: real {last['real'] - rows['real'].iloc[0]:+.3f}, forecast "
                  f"{last['forecast'] - rows['forecast'].iloc[0]:+.3f} nats; {where}")
    print("cost: " + ", ".join(f"{k} {v:.2f}" for k, v in cost.items()))
    import matplotlib

    matplotlib.use("Agg")
    figure = Path(ns.figure) if ns.figure else Path(ns.run_dir) / "explain" / "explain.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    plot_explanation(expl, comparison).savefig(figure, dpi=ns.dpi)
    print(f"figure: {figure}")
    return 0


def list_explained_runs(folder: str | Path) -> list[Path]:
    """Run directories under ``folder`` that hold an attribution (explain/meta.json), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"run folder {folder} does not exist or is not a directory")
    return sorted(p.parent.parent for p in folder.rglob("explain/meta.json"))


def list_forecast_runs(folder: str | Path) -> list[Path]:
    """Forecast run directories (with forecast.json) under ``folder``, sorted."""
    folder = Path(folder)
    return sorted(p.parent for p in folder.rglob("forecast.json")) if folder.is_dir() else []


def pair_tables(run_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The pair diagnostics (pairs.csv) and their Spearman rank correlations, or None when the run has none."""
    folder = Path(run_dir) / "explain"
    if not (folder / "pairs.csv").exists():
        return None
    return pd.read_csv(folder / "pairs.csv"), pd.DataFrame(read_json(folder / "meta.json")["pair_rank_correlations"])
