"""Small tabular inputs (manifests, ground truth): CSV or Parquet → list of records."""
from __future__ import annotations

import csv
import io
from typing import Any, Dict, List

from vadclip.io import storage
from vadclip.errors import InputError, MissingInputError


def read_records(path: str, what: str = "table") -> List[Dict[str, Any]]:
    """Rows of a ``.csv`` (header row) or Parquet file, local or in object storage, as
    dicts.  A missing or unreadable file raises an error naming the file and ``what``
    it should be."""
    if not storage.isfile(path):
        raise MissingInputError(f"{what} not found: {path}")
    try:
        if path.lower().endswith(".csv"):
            return list(csv.DictReader(io.StringIO(storage.read_text(path), newline="")))
        import pyarrow.parquet as pq

        with storage.open_input(path) as fh:
            return pq.read_table(fh).to_pylist()
    except (OSError, ValueError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read {what}: {type(exc).__name__}: {exc}") from exc
