"""Dataclass configs as command lines: one mechanism for every runnable in the project.

A config is a frozen dataclass whose fields carry help text in ``field(metadata={"help": ...})`` and whose
``__post_init__`` refuses impossible values with ``ValueError``. ``parse_config`` builds an argparse parser from
it: ``--config FILE`` (JSON) is read first, then ``--field value`` flags override single fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

C = TypeVar("C")

__all__ = ["parse_config", "config_to_dict", "config_from_dict", "load_config", "read_config_file",
           "add_config_arguments", "HelpFormatter"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show argparse defaults, except the ``None`` of config flags (their help already states the field default)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Return a JSON-ready dict of a (possibly nested) dataclass config; tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a JSON or command-line value to the annotated type, or raise ValueError naming ``where``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except (TypeError, ValueError) as err:
                errors.append(str(err))
        raise ValueError(f"{where}: cannot read {value!r} as {annotation}: {'; '.join(errors)}")
    if origin is typing.Literal:
        for arg in args:
            if value == arg or str(value) == str(arg):
                return arg
        raise ValueError(f"{where}: {value!r} is not one of {list(args)}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object for {annotation.__name__}, got {value!r}")
        return config_from_dict(annotation, value, where=where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "1", "yes", "on"}:
            return True
        if isinstance(value, str) and value.lower() in {"false", "0", "no", "off"}:
            return False
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{where}: expected a finite number, got {value!r}")
        return number
    if annotation is str:
        if not isinstance(value, (str, int, float)):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def config_from_dict(cls: type[C], data: dict[str, Any], where: str = "config",
                     names: dict[str, str] | None = None) -> C:
    """Build ``cls`` from a dict, refusing unknown keys with a message that lists the known ones.

    Args:
        where: what the dict came from, for messages (``{where}.{field}``).
        names: how to call a field in messages instead (``--seed`` for a flag, ``file.json: seed`` for a file).
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    hints = _field_types(cls)
    names = names or {}
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known fields: {known}")
    kwargs = {k: _coerce(v, hints[k], names.get(k, f"{where}.{k}")) for k, v in data.items()}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k, v in kwargs.items():
        _check_bounds(fields[k], v, names.get(k, f"{where}.{k}"))
    return cls(**kwargs)


#: the bound of every integer field without its own ``metadata["max"]``: no config size may overflow int64 math.
INT_LIMIT = 2 ** 31 - 1
#: seeds are used by numpy, torch and the stdlib alike; all of them take [0, 2**32).
SEED_LIMIT = 2 ** 32


def _check_bounds(f: dataclasses.Field, value: Any, where: str) -> None:
    """Refuse an integer (or each integer of a tuple) outside its bound: [0, 2**32) for seeds, ``metadata["max"]``
    (sizes whose cost grows with them), else |value| <= INT_LIMIT."""
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if not isinstance(item, int) or isinstance(item, bool):
            continue
        if f.name == "seed" or f.name.endswith("_seed"):
            if not 0 <= item < SEED_LIMIT:
                raise ValueError(f"{where}: a seed must be an integer in [0, 2**32), got {item}")
        elif "max" in f.metadata and item > f.metadata["max"]:
            raise ValueError(f"{where}: must be <= {f.metadata['max']} (a size bound), got {item}")
        elif abs(item) > INT_LIMIT:
            raise ValueError(f"{where}: must lie within +-{INT_LIMIT}, got {item}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file (a UTF-8 byte-order mark is skipped); every failure names the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"config file {path} is a directory; give a JSON file") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                         f"{err.start})") from None
    except OSError as err:
        raise ValueError(f"config file {path}: cannot read it ({err.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"config file {path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a JSON object of fields, got {type(data).__name__}")
    return data


def load_config(cls: type[C], path: str | Path) -> C:
    """Read a JSON config file into ``cls``; errors name the file (and the field)."""
    data = read_config_file(path)
    return config_from_dict(cls, data, where=str(path), names={k: f"{path}: {k}" for k in data})


def _help(f: dataclasses.Field) -> str:
    text = f.metadata.get("help", "")
    if "max" in f.metadata:
        text = f"{text}; at most {f.metadata['max']}"
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = f.default_factory()  # type: ignore[misc]
    else:
        return text
    if dataclasses.is_dataclass(default) or default is None or "default" in text:
        return text  # the help text states its own default (what "unset" means), so it is not printed twice
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    return f"{text} (default: {default})".strip()


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add ``--config`` and one ``--field`` flag per (non-nested) dataclass field to ``parser``."""
    parser.add_argument("--config", metavar="FILE", help="JSON file with config fields; flags below override it")
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        if not f.init or dataclasses.is_dataclass(hints[f.name]):
            continue
        flag = "--" + f.name.replace("_", "-")
        choices, metavar = None, f.name.upper()
        if typing.get_origin(hints[f.name]) is typing.Literal:
            choices = [str(a) for a in typing.get_args(hints[f.name])]
            metavar = "{" + ",".join(choices) + "}"  # the choices show in the usage line and the option list
        elif hints[f.name] is bool:
            metavar = "{true,false}"
        extra: dict[str, Any] = {}
        if hints[f.name] is bool:  # a bare --resume means --resume true
            extra = dict(nargs="?", const="true")
        parser.add_argument(flag, dest=f.name, default=None, metavar=metavar, choices=choices, help=_help(f),
                            **extra)


def config_from_namespace(cls: type[C], ns: argparse.Namespace) -> C:
    """Merge ``--config FILE`` and explicit flags into a validated ``cls`` instance; messages name the flag or file."""
    base: dict[str, Any] = {}
    names: dict[str, str] = {}
    if getattr(ns, "config", None):
        base = config_to_dict(load_config(cls, ns.config))
        names = {k: f"{ns.config}: {k}" for k in base}
    for f in dataclasses.fields(cls):
        value = getattr(ns, f.name, None)
        if value is not None:
            base[f.name] = value
            names[f.name] = "--" + f.name.replace("_", "-")
    return config_from_dict(cls, base, where="--config/flags", names=names)


def parse_config(cls: type[C], argv: Sequence[str] | None = None, prog: str | None = None,
                 description: str | None = None) -> C:
    """Parse a command line into ``cls``; bad values exit with status 2 and a one-line message."""
    parser = argparse.ArgumentParser(prog=prog, description=description or (cls.__doc__ or "").strip(),
                                     formatter_class=HelpFormatter)
    add_config_arguments(parser, cls)
    ns = parser.parse_args(argv)
    try:
        return config_from_namespace(cls, ns)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits
