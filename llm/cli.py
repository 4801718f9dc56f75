"""Command line: ``python -m llm sft|dpo|train|eval`` with dataclass configs (``--config FILE`` then ``--field``).

    python -m llm sft --epochs 2                       # SFT of a tiny GPT-2 on synthetic pairs
    python -m llm sft --loss extend                    # the paper's extend SFT (y+ and y- as targets)
    python -m llm dpo --model runs/<sft-run>/model     # DPO from a saved model
    python -m llm train --loss ipo --beta 0.5          # any loss of the toykit registry
    python -m llm eval --probes hh_formal_prob_train.jsonl --model DIR
    python -m llm train --loss dpo --out-dir runs/x --resume   # continue a killed run
    python -m llm validate --preset cpu                # the paper's claims end to end (see llm.validation.pipeline)
    python -m llm dpo --explain-prompts 16 --out-dir runs/d   # record what moved every probe, per loss term
    python -m llm forecast --loss dpo --out-dir runs/f # the same run predicted from the kernel at its start
    python -m llm explain runs/d --forecast runs/f     # measured vs predicted vs forecast, stacked by term
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Sequence

from llm.config import EvalConfig, TrainConfig
from llm.objective import NonFiniteLossError, Objective
from llm.presets import PRESETS, preset_fields
from toykit.configs import add_config_arguments, config_from_dict, config_from_namespace
from toykit.runs import read_json

__all__ = ["main", "build_parser"]

_FIXED = {"sft": ("sft", "extend"), "dpo": ("dpo",)}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-command per entry point."""
    parser = argparse.ArgumentParser(prog="python -m llm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from llm.validation.pipeline import ValidateConfig

    subs = parser.add_subparsers(dest="command", required=True,
                                 metavar="{sft,dpo,train,eval,validate,forecast,explain}")
    helps = {"sft": "supervised finetuning on y+ (or --loss extend: on y+ and y-)",
             "dpo": "direct preference optimisation (toykit loss 'dpo')",
             "train": f"any loss: --loss one of {', '.join(Objective.known())}",
             "eval": "evaluate every probe type of a probe set on a model",
             "validate": "pretrain -> SFT / extend -> off- and on-policy DPO over seeds; score the paper's claims",
             "forecast": "predict a run before training it: its model linearised at the start (frozen eNTK, exact "
                         "softmax) trained with the run's recipe; --loss one of the train losses"}
    configs = {"eval": EvalConfig, "validate": ValidateConfig}
    for name, text in helps.items():
        sub = subs.add_parser(name, help=text, description=text)  # field help already states the default
        add_config_arguments(sub, configs.get(name, TrainConfig))
        if configs.get(name, TrainConfig) is TrainConfig:
            sub.add_argument("--preset", choices=PRESETS, default=None,
                             help="the paper's exact recipe (RMSprop 5e-7, warm-up (step+1)/151, clip 10, batch 4, "
                                  "beta 0.1, 512 total / 256 prompt tokens, its truncation side and evaluation "
                                  "cadence, probes = first 500 training examples; llm/presets.py documents each "
                                  "field): paper-hh or paper-ultrafeedback; --config and flags override it")
    from llm.explain_report import add_explain_arguments

    add_explain_arguments(subs.add_parser("explain", help="print and plot what moved every probe of a run recorded "
                                          "with --explain-prompts (and a forecast against it)"))
    return parser


def _with_preset(ns: argparse.Namespace) -> TrainConfig:
    """The preset's fields, then the --config file's, then the explicit flags."""
    given = {f.name: getattr(ns, f.name) for f in dataclasses.fields(TrainConfig) if getattr(ns, f.name) is not None}
    from_file = read_json(ns.config) if ns.config else {}
    loss = given.get("loss") or from_file.get("loss") or _FIXED.get(ns.command, ("dpo",))[0]
    base = {k: v for k, (v, _) in preset_fields(ns.preset, loss).items()}
    return config_from_dict(TrainConfig, {**base, **from_file, **given}, where=f"--preset {ns.preset}/--config/flags")


def _config(parser: argparse.ArgumentParser, ns: argparse.Namespace):
    if ns.command == "eval":
        return config_from_namespace(EvalConfig, ns)
    if ns.command == "validate":
        from llm.validation.pipeline import ValidateConfig

        return config_from_namespace(ValidateConfig, ns)
    if ns.command in ("train", "forecast") and ns.loss is None:
        parser.error("train needs --loss NAME; known: " + ", ".join(Objective.known()))
    cfg = _with_preset(ns) if getattr(ns, "preset", None) else config_from_namespace(TrainConfig, ns)
    if ns.command in _FIXED:
        allowed = _FIXED[ns.command]
        given = ns.loss or (read_json(ns.config).get("loss") if ns.config else None)
        if given is None:
            cfg = dataclasses.replace(cfg, loss=allowed[0])
        elif given not in allowed:
            parser.error(f"{ns.command} takes --loss {' or '.join(allowed)}; use `train --loss {given}`")
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, print the run directory and wall time; return the exit status."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command == "explain":
        from llm.explain_report import run_explain_command

        return run_explain_command(ns)
    try:
        cfg = _config(parser, ns)
    except ValueError as err:
        parser.error(str(err))
    from llm.training import evaluate, train  # heavy imports only once the command line is valid

    start = time.perf_counter()
    try:
        if ns.command == "eval":
            _, run_dir = evaluate(cfg)
        elif ns.command == "validate":
            from llm.validation.pipeline import run_validation

            run_dir, doc = run_validation(cfg)
            print(f"{doc['held']} of {doc['total']} claims hold in every seed; report: {run_dir / 'report.md'}")
        elif ns.command == "forecast":
            from llm.forecast import forecast, format_cost

            result = forecast(cfg)
            run_dir = result.run_dir
            print(format_cost(result.summary["forecast"]))
        else:
            run_dir = train(cfg).run_dir
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"run directory: {run_dir}  ({time.perf_counter() - start:.1f} s)")
    return 0
