"""Command line for the toy experiments.

    python -m toykit.experiments list
    python -m toykit.experiments <name> [--help] [--config FILE] [--field value ...] [--out-dir DIR] [--root DIR]

A bad config (or an ``--out-dir`` that already holds a run) is refused with a one-line message and exit status 2
before any work is done.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Sequence

from toykit.configs import HelpFormatter, add_config_arguments, config_from_namespace
from toykit.experiments import get_experiment, registry, run_experiment
from toykit.progress import LineReporter, reporting
from toykit.runs import DEFAULT_RUNS_ROOT

PROG = "python -m toykit.experiments"


def _print_list() -> None:
    experiments = registry()
    width = max((len(name) for name in experiments), default=0)
    for name, module in experiments.items():
        print(f"{name:<{width}}  {module.DESCRIPTION}")


def _usage() -> str:
    return f"usage: {PROG} list | {PROG} <name> [--help] [--config FILE] [--field value ...] [--out-dir DIR]"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        print("\nexperiments:")
        _print_list()
        return 0 if argv else 2
    if argv[0] == "list":
        _print_list()
        return 0
    name, rest = argv[0], argv[1:]
    try:
        module = get_experiment(name)
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"{PROG} {name}", description=module.DESCRIPTION,
                                     formatter_class=HelpFormatter)
    add_config_arguments(parser, module.Config)
    parser.add_argument("--out-dir", dest="_out_dir", metavar="DIR", default=None,
                        help="run directory to create (must not already hold a run)")
    parser.add_argument("--root", dest="_root", metavar="DIR", default=str(DEFAULT_RUNS_ROOT),
                        help="parent of the default run directory <time>-<name>")
    parser.add_argument("--progress", dest="_progress", metavar="{true,false}", default="true",
                        choices=["true", "false"], help="print progress lines (phase, step, ETA) to stderr")
    ns = parser.parse_args(rest)  # --help and unknown flags exit here
    try:
        cfg = config_from_namespace(module.Config, ns)
    except ValueError as err:
        parser.error(str(err))  # exits with status 2
    start = time.perf_counter()
    reporter = LineReporter(name) if ns._progress == "true" else None
    try:
        with reporting(reporter):
            result, run_dir = run_experiment(name, cfg, out_dir=ns._out_dir, root=ns._root)
    except (FileExistsError, ValueError) as err:  # a refused run folder or input: one line, nothing left behind
        parser.error(str(err))
    wall = time.perf_counter() - start
    print(f"{name}: finished in {wall:.1f} s; run directory: {run_dir}")
    for key, value in result.summary.items():
        if isinstance(value, (int, float, str, bool)):
            print(f"  {key}: {value}")
    claims = claim_lines(result.summary)
    if claims:
        print("claims:")
        print("\n".join(claims))
    return 0


def claim_lines(summary: dict[str, Any]) -> list[str]:
    """One line per claim of a summary's ``claims`` (or ``claim_checks``) list: verdict, claim, measured values."""
    claims = summary.get("claims", summary.get("claim_checks"))
    if not isinstance(claims, list):
        return []
    lines = []
    for c in claims:
        if not isinstance(c, dict):
            continue
        held = c.get("held", c.get("holds"))
        verdict = "holds" if held is True else ("FAILS" if held is False else "n/a")
        measured = c.get("measured", "")
        if isinstance(measured, dict):
            measured = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in measured.items())
        lines.append(f"  [{verdict}] {c.get('claim', '?')}: {measured}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
