"""Command line of toykit: ``python -m toykit <command> [--config FILE] [--field value ...]``.

Each command is a module that provides ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run_from_namespace(ns, parser)``; adding a command is one line in ``COMMANDS``.
"""

from __future__ import annotations

import argparse

from toykit.configs import HelpFormatter
from typing import Any, Sequence

from toykit import squeeze_demo

COMMANDS = (
    squeeze_demo,
)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with one subparser per command."""
    parser = argparse.ArgumentParser(prog="python -m toykit", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        sub = subparsers.add_parser(module.NAME, help=module.HELP, description=module.HELP,
                                    formatter_class=HelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(_module=module, _parser=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> Any:
    """Parse ``argv`` and run the chosen command; return what it returns (a run directory)."""
    ns = build_parser().parse_args(argv)
    return ns._module.run_from_namespace(ns, ns._parser)


if __name__ == "__main__":
    main()
