"""Small tabular inputs (manifests, ground truth): CSV or Parquet → list of records."""
from __future__ import annotations

import csv
import os
from typing import Any, Dict, List

from .errors import InputError, MissingInputError


def read_records(path: str, what: str = "table") -> List[Dict[str, Any]]:
    """Rows of a ``.csv`` (header row) or Parquet file as dicts.  A missing or
    unreadable file raises an error naming the file and ``what`` it should be."""
    if not os.path.isfile(path):
        raise MissingInputError(f"{what} not found: {path}")
    try:
        if path.endswith(".csv"):
            with open(path, newline="") as fh:
                return list(csv.DictReader(fh))
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    except (OSError, ValueError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read {what}: {type(exc).__name__}: {exc}") from exc
