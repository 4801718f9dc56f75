"""Where ``--data`` records come from: a local JSONL / JSON / Parquet file, a ``datasets`` directory, or a hub name.

Every source yields (row number, record) pairs, as ``llm.data.read_jsonl`` does, so the pair and probe parsers and
their error messages (``source:row``) are shared. A column mapping renames fields to TRL's names before parsing
(``prompt=question,chosen=response_j,rejected=response_k``). Hub names go through ``datasets.load_dataset``, which
honours ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` (only the local cache is read then); an unreachable hub gives one
clear message instead of a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llm.data import read_jsonl

__all__ = ["parse_columns", "read_records", "is_local"]

_SUFFIXES = (".jsonl", ".json", ".parquet")


def parse_columns(spec: str) -> dict[str, str]:
    """Parse ``"prompt=question,chosen=good"`` into {source column: TRL name}; "" gives {}."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        target, sep, source = part.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise ValueError(f"--data-columns: expected NAME=COLUMN items separated by commas, got {part!r}")
        mapping[source.strip()] = target.strip()
    return mapping


def is_local(data: str) -> bool:
    """True when ``data`` names an existing file or directory (else it is taken for a hub dataset name)."""
    return Path(data).exists()


def _rows(rows: list[Any], source: str) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for i, rec in enumerate(rows, start=1):
        if not isinstance(rec, dict):
            raise ValueError(f"{source}:{i}: expected an object (a record with named fields), got "
                             f"{type(rec).__name__}")
        out.append((i, rec))
    if not out:
        raise ValueError(f"data {source} holds no records")
    return out


def _read_json(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        if "Extra data" in err.msg:  # JSON lines under a .json name
            return read_jsonl(path)
        raise ValueError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if isinstance(doc, dict):  # {"train": [...]} or {"data": [...]}: one list-valued field
        lists = [k for k, v in doc.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise ValueError(f"{path}: expected a JSON array of records or an object with one array field, got "
                             f"keys {sorted(doc)}")
        doc = doc[lists[0]]
    if not isinstance(doc, list):
        raise ValueError(f"{path}: expected a JSON array of records, got {type(doc).__name__}")
    return _rows(doc, str(path))


def _read_parquet(path: Path) -> list[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError subclasses for a non-Parquet file
        raise ValueError(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from None
    return _rows(table.to_pylist(), str(path))


def _read_dataset_dir(path: Path, split: str) -> list[tuple[int, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise ValueError(f"{path} is a directory but not one written by datasets' save_to_disk ({err}); pass a "
                         f"JSONL / JSON / Parquet file instead") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"{path}: no split {split!r}; splits: {sorted(ds)} (set --data-split)")
        ds = ds[split]
    return _rows(list(ds), f"{path}[{split}]")


def _read_hub(name: str, split: str) -> list[tuple[int, dict[str, Any]]]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except ValueError as err:  # an unknown split
        raise ValueError(f"dataset {name!r}: {str(err).splitlines()[0]}") from None
    except Exception as err:  # ConnectionError, DatasetNotFoundError, offline cache misses
        raise ValueError(f"cannot load dataset {name!r} (split {split!r}): not a local path, and the hub is "
                         f"unreachable or offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) with no cached copy "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); download it "
                         f"where the hub is reachable or pass a local JSONL / JSON / Parquet file") from None
    return _rows(list(ds), f"{name}[{split}]")


def read_records(data: str, *, split: str = "train", columns: dict[str, str] | None = None
                 ) -> tuple[list[tuple[int, dict[str, Any]]], str]:
    """Read the records of ``data`` and rename ``columns``; return (records, source label for messages).

    Args:
        data: a .jsonl / .json / .parquet file, a ``datasets.save_to_disk`` directory, or a hub dataset name.
        split: the split of a directory holding a DatasetDict or of a hub dataset.
        columns: {source column: TRL name}; a missing source column is refused, naming the columns found.
    """
    path = Path(data)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix not in _SUFFIXES:
            raise ValueError(f"data file {path}: unknown type {suffix or '(no suffix)'}; expected one of {_SUFFIXES}")
        records = {".jsonl": read_jsonl, ".json": _read_json, ".parquet": _read_parquet}[suffix](path)
        source = str(path)
    elif path.is_dir():
        records, source = _read_dataset_dir(path, split), f"{path}[{split}]"
    elif path.suffix.lower() in _SUFFIXES or data.startswith((".", "/", "~")):
        raise ValueError(f"data file {path} " + ("is not a regular file (a device or pipe?)" if path.exists()
                                                 else "does not exist"))
    else:
        records, source = _read_hub(data, split), f"{data}[{split}]"
    if columns:
        missing = sorted(set(columns) - set(records[0][1]))
        if missing:
            raise ValueError(f"{source}: --data-columns names column(s) {missing} that the data lacks; columns: "
                             f"{sorted(records[0][1])}")
        records = [(i, {columns.get(k, k): v for k, v in rec.items()}) for i, rec in records]
    return records, source
