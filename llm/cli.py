"""Command line: ``python -m llm sft|dpo|train|eval|validate|forecast|explain`` with dataclass configs (``--config FILE`` then ``--field``).

    python -m llm sft --epochs 2                       # SFT of a tiny GPT-2 on synthetic pairs
    python -m llm sft --loss extend                    # the paper's extend SFT (y+ and y- as targets)
    python -m llm dpo --model runs/<sft-run>/model     # DPO from a saved model
    python -m llm train --loss ipo --beta 0.5          # any loss of the toykit registry
    python -m llm eval --probes hh_formal_prob_train.jsonl --model DIR
    python -m llm train --loss dpo --out-dir runs/x --resume   # continue a killed run
    python -m llm train --loss grpo --lr 1e-3          # online RL on the synthetic world, its judge the reward
    python -m llm validate --preset cpu                # the paper's claims end to end (see llm.validation.pipeline)
    python -m llm dpo --explain-prompts 16 --out-dir runs/d   # record what moved every probe, per loss term
    python -m llm forecast --loss dpo --out-dir runs/f # the same run predicted from the kernel at its start
    python -m llm explain runs/d --forecast runs/f     # measured vs predicted vs forecast, stacked by term

Only the chosen command's config module is imported before parsing, and torch / transformers only after it, so
``--help`` answers at once. A new config-driven command is one ``COMMANDS`` entry and one ``_RUNNERS`` entry.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import time
from typing import Any, Callable, Sequence

from toykit.configs import (HelpFormatter, add_config_arguments, config_from_dict, config_from_namespace,
                            read_config_file)

__all__ = ["main", "build_parser", "statistics_table", "COMMANDS"]

#: command -> (help, "module:ConfigClass"); the module is imported only when that command is parsed.
COMMANDS: dict[str, tuple[str, str]] = {
    "sft": ("supervised finetuning on y+ (or --loss extend: on y+ and y-)", "llm.config:TrainConfig"),
    "dpo": ("direct preference optimisation (toykit loss 'dpo')", "llm.config:TrainConfig"),
    "train": ("any loss of the toykit registry: --loss NAME (listed in --loss's help)", "llm.config:TrainConfig"),
    "eval": ("evaluate every probe type of a probe set on a model and print the statistics",
             "llm.config:EvalConfig"),
    "validate": ("pretrain -> SFT / extend -> off- and on-policy DPO over seeds; score the paper's claims",
                 "llm.validation.config:ValidateConfig"),
    "forecast": ("predict a run before training it: its model linearised at the start (frozen eNTK, exact softmax) "
                 "trained with the run's recipe; --loss one of the train losses", "llm.config:TrainConfig"),
    "explain": ("print and plot what moved every probe of a run recorded with --explain-prompts (and a forecast "
                "against it)", ""),  # its own options (llm.explain_report), no config
}

_FIXED = {"sft": ("sft", "extend"), "dpo": ("dpo",)}  # the losses sft and dpo accept (the first is the default)


def _config_class(command: str) -> type:
    module, name = COMMANDS[command][1].split(":")
    return getattr(importlib.import_module(module), name)


def _command_in(argv: Sequence[str]) -> str | None:
    """The first argument naming a command (flags before it are top-level ones such as --help)."""
    return next((a for a in argv if a in COMMANDS), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``command``'s sub-parser gets its options (None: every command's, "": none)."""
    parser = argparse.ArgumentParser(prog="python -m llm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, (text, config) in COMMANDS.items():
        sub = subs.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)
        if name == "explain" and command in (name, None):
            from llm.explain_report import add_explain_arguments

            add_explain_arguments(sub)
        elif command in (name, None):
            add_config_arguments(sub, _config_class(name))
            if name in _FIXED:
                _fix_loss_help(sub, _FIXED[name])
            if config == "llm.config:TrainConfig":
                from llm.presets import PRESETS

                sub.add_argument("--preset", choices=PRESETS, default=None,
                                 help="the paper's exact recipe (RMSprop 5e-7, warm-up (step+1)/151, clip 10, batch "
                                      "4, beta 0.1, 512 total / 256 prompt tokens, its truncation side and "
                                      "evaluation cadence, probes = first 500 training examples; llm/presets.py "
                                      "documents each field): paper-hh or paper-ultrafeedback; --config and flags "
                                      "override it")
    return parser


def _with_preset(ns: argparse.Namespace):
    """The preset's fields, then the --config file's, then the explicit flags."""
    from llm.config import TrainConfig
    from llm.presets import preset_fields

    given = {f.name: getattr(ns, f.name) for f in dataclasses.fields(TrainConfig) if getattr(ns, f.name) is not None}
    from_file = read_config_file(ns.config) if ns.config else {}
    loss = given.get("loss") or from_file.get("loss") or _FIXED.get(ns.command, ("dpo",))[0]
    base = {k: v for k, (v, _) in preset_fields(ns.preset, loss).items()}
    return config_from_dict(TrainConfig, {**base, **from_file, **given}, where=f"--preset {ns.preset}/--config/flags")


def _fix_loss_help(sub: argparse.ArgumentParser, allowed: tuple[str, ...]) -> None:
    for action in sub._actions:
        if action.dest == "loss":
            others = f" or {' or '.join(allowed[1:])}" if len(allowed) > 1 else ""
            action.help = (f"objective: {allowed[0]}{others} (default: {allowed[0]}); other losses: "
                           f"`train --loss NAME`")


def _config(parser: argparse.ArgumentParser, ns: argparse.Namespace):
    cls = _config_class(ns.command)
    if ns.command in ("train", "forecast") and ns.loss is None \
            and not (ns.config and "loss" in read_config_file(ns.config)):
        from llm.objective import Objective

        parser.error("train needs --loss NAME; known: " + ", ".join(Objective.known()))
    if ns.command in _FIXED:
        allowed = _FIXED[ns.command]
        given = ns.loss or (read_config_file(ns.config).get("loss") if ns.config else None)
        if given is not None and given not in allowed:
            parser.error(f"{ns.command} takes --loss {' or '.join(allowed)}; use `train --loss {given}`")
        ns.loss = given or allowed[0]
    if getattr(ns, "preset", None) and COMMANDS[ns.command][1] == "llm.config:TrainConfig":  # validate has its own
        return _with_preset(ns)
    return config_from_namespace(cls, ns)


def _given_fields(ns: argparse.Namespace) -> set[str]:
    """The config fields the user set: explicit flags and the keys of the --config file."""
    given = {name for name, value in vars(ns).items() if value is not None}
    return given | (set(read_config_file(ns.config)) if getattr(ns, "config", None) else set())


def _quiet_transformers(cfg) -> None:
    if not cfg.progress:  # --progress false also silences transformers' own bars (saving model shards)
        from transformers.utils import logging

        logging.disable_progress_bar()


def _run_train(cfg) -> str:
    from llm.training import train
    from toykit.group_losses import group_loss_names

    _quiet_transformers(cfg)
    if cfg.loss in group_loss_names():
        return _train_rl_on_world(cfg)
    return str(train(cfg).run_dir)


def _train_rl_on_world(cfg) -> str:
    """Online RL needs a reward: on the synthetic world (no --data) its judge scores every sampled completion."""
    if cfg.data:
        raise ValueError(f"--loss {cfg.loss} needs a reward function: the CLI has one for the synthetic world "
                         "(leave --data empty); for your data call llm.rl.train_rl(cfg, reward_fn) from Python")
    from llm.rl import train_rl
    from llm.validation.rl_world import world_environment

    env = world_environment(seed=cfg.seed)
    return str(train_rl(cfg, env.reward, tokenizer=env.tokenizer, pairs=env.pairs, probes=env.probes).run_dir)


def _run_eval(cfg) -> str:
    from llm.training import evaluate

    _quiet_transformers(cfg)
    result, run_dir = evaluate(cfg)
    print(statistics_table(result.rows(0, 0)))
    return str(run_dir)


def statistics_table(rows: Sequence[dict[str, Any]]) -> str:
    """Format probe rows (probe, statistic, value, count) as a text table: one line per probe type."""
    stats = list(dict.fromkeys(r["statistic"] for r in rows))
    table: dict[str, dict[str, Any]] = {}
    for r in rows:
        table.setdefault(r["probe"], {"count": r["count"]})[r["statistic"]] = r["value"]
    width = max([len("probe")] + [len(p) for p in table])
    cols = [max(10, len(s)) for s in stats]
    lines = [f"{'probe':<{width}}  " + "  ".join(f"{s:>{w}}" for s, w in zip(stats, cols)) + f"  {'examples':>8}"]
    for probe, values in table.items():
        cells = "  ".join(f"{values.get(s, float('nan')):>{w}.4f}" for s, w in zip(stats, cols))
        lines.append(f"{probe:<{width}}  {cells}  {values['count']:>8}")
    return "\n".join(lines)


def _run_validate(cfg) -> str:
    from llm.validation.pipeline import run_validation

    run_dir, doc = run_validation(cfg)
    print(f"{doc['held']} of {doc['total']} claims hold in every seed; report: {run_dir / 'report.md'}")
    return str(run_dir)


def _run_forecast(cfg) -> str:
    from llm.forecast import forecast, format_cost

    _quiet_transformers(cfg)
    result = forecast(cfg)
    print(format_cost(result.summary["forecast"]))
    return str(result.run_dir)


#: command -> function(config) -> run directory (it prints what the user should see besides the directory).
_RUNNERS: dict[str, Callable[[Any], str]] = {"sft": _run_train, "dpo": _run_train, "train": _run_train,
                                              "eval": _run_eval, "validate": _run_validate,
                                              "forecast": _run_forecast}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, print the run directory and wall time; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_in(argv) or "")
    ns = parser.parse_args(argv)
    if ns.command == "explain":
        from llm.explain_report import run_explain_command

        return run_explain_command(ns)
    try:
        cfg = _config(parser, ns)
    except ValueError as err:
        parser.error(str(err))
    if ns.command == "forecast":  # --probe-mode shared / --share-prompts true asked for: say it is not honoured
        from llm.forecast import warn_overrides

        warn_overrides(cfg, _given_fields(ns))
    from llm.objective import NonFiniteLossError  # heavy imports only once the command line is valid

    start = time.perf_counter()
    try:
        run_dir = _RUNNERS[ns.command](cfg)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"run directory: {run_dir}  ({time.perf_counter() - start:.1f} s)")
    return 0
