"""What every version of an output folder's Delta table held: the readers' view at each
commit, read with the ``deltalake`` package alone (no vadclip code), for tests that say a
reader never saw a video twice, or not at all, while a run replaced its rows."""
from collections import Counter
from typing import Dict, List

import pyarrow as pa
from deltalake import DeltaTable


def version(directory) -> int:
    return DeltaTable(str(directory)).version()


def rows_per_path(directory, since: int) -> List[Dict[str, int]]:
    """For each version of the table from ``since`` to its latest: ``{path: rows}``."""
    last = version(directory)
    out = []
    for v in range(since, last + 1):
        t = pa.table(DeltaTable(str(directory), version=v).to_pyarrow_table(columns=["path"]))
        out.append(dict(Counter(t.column("path").to_pylist())))
    return out


def read(directory, columns=None) -> pa.Table:
    """The table's current version, as any Delta reader sees it (a glob of its Parquet files
    would also read the files a rewrite replaced, until the next run removes them)."""
    return pa.table(DeltaTable(str(directory)).to_pyarrow_table(columns=columns))
