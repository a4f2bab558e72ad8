"""A Delta table's current snapshot read by this Python process, never collected through the driver JVM.

Spark lists the snapshot's Parquet files (and checks that no rows were deleted in place, which a plain read of the
files would bring back); pyarrow reads the columns batch by batch into numpy arrays. Evaluation reads
eval_candidates this way (1 + C ids per event outgrow the driver's default 1 GB heap long before this process), and
training its side data (each item's features).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from twots.cli import UserError
from twots.data.tables import PAD_ITEM
from twots.spark import memory_guard


def read_delta(spark, data_dir: str | Path, table: str):
    """Table `table` of a prepared folder as a Spark DataFrame; a missing one names the job that writes it."""
    path = Path(data_dir) / table
    if not path.exists():
        raise UserError(f"no {table} table", str(path), f"is {data_dir} the output of jobs/prepare.py? rerun it "
                        f"with --output {data_dir}")
    return spark.read.format("delta").load(str(path))


def snapshot_files(spark, data_dir: str | Path, table: str) -> list[str]:
    """Local paths of the Parquet files of a Delta table's current snapshot. Fails when the snapshot has rows
    deleted in place (deletion vectors), which a plain read of its files would bring back."""
    df = read_delta(spark, data_dir, table)
    files = sorted(_local_path(uri) for uri in df.inputFiles())
    in_files = sum(m.num_rows for m in _footers(files))
    live = df.count()  # answered from the Delta log's file statistics
    if in_files != live:
        raise ValueError(f"{data_dir}/{table}: its files hold {in_files:,} rows but the snapshot {live:,} (rows "
                         f"deleted in place); rewrite the table (rerun jobs/prepare.py) before evaluating on it")
    return files


def _footers(files: list[str]):
    import pyarrow.parquet as pq

    return [pq.ParquetFile(f).metadata for f in files]


def _column_bytes(files: list[str], columns: tuple[str, ...]) -> int:
    """Uncompressed bytes of `columns` in `files` (Parquet footers): about the arrays they become."""
    total = 0
    for meta in _footers(files):
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                chunk = group.column(c)
                if chunk.path_in_schema.split(".")[0] in columns:
                    total += chunk.total_uncompressed_size
    return total


def _local_path(uri: str) -> str:
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme == "dbfs":  # Databricks mounts DBFS at /dbfs on the driver
        return "/dbfs" + unquote(parsed.path)
    raise ValueError(f"{uri}: table files are read on the driver's file system (file:, dbfs:); "
                     f"put the data folder there")


def read_snapshot(spark, data_dir: str | Path, table: str, columns: tuple[str, ...], where=None,
                  batch_rows: int = 8192, optional: tuple[str, ...] = (), purpose: str = "evaluation"
                  ) -> dict[str, np.ndarray]:
    """Columns of a Delta table's current snapshot as numpy arrays (list columns as 2-D arrays padded with -1 at
    the end), read batch by batch from its Parquet files; `where` is a pyarrow.dataset filter applied to each batch.
    `optional` columns are read when the table has them (absent from the result otherwise). `purpose` names the
    reader in the message of a memory error."""
    import pyarrow.dataset as ds

    files = snapshot_files(spark, data_dir, table)
    dataset = ds.dataset(files, format="parquet")
    columns = (*columns, *(name for name in optional if name in dataset.schema.names))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in columns}
    needs = f"up to {2 * _column_bytes(files, columns) / 2**20:,.0f} MB here: the arrays, and a copy while joining them"
    with memory_guard(spark, f"reading {data_dir}/{table} for {purpose}", needs):
        for batch in dataset.to_batches(columns=list(columns), filter=where, batch_size=batch_rows):
            for name, values in batch_columns(batch).items():
                parts[name].append(values)
        return {name: _concat(pieces, dataset.schema.field(name)) for name, pieces in parts.items()}


def batch_columns(batch) -> dict[str, np.ndarray]:
    """One Arrow record batch -> numpy columns; list columns become [rows, longest] arrays padded with -1."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out = {}
    for name, col in zip(batch.schema.names, batch.columns):
        if not pa.types.is_list(col.type):
            out[name] = col.to_numpy(zero_copy_only=False)
            continue
        lengths = pc.list_value_length(col).fill_null(0).to_numpy()
        flat = pc.list_flatten(col).to_numpy()
        width = int(lengths.max(initial=0))
        if (lengths == width).all():
            out[name] = flat.reshape(len(col), width)
            continue
        padded = np.full((len(col), width), PAD_ITEM, dtype=flat.dtype)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        padded[np.repeat(np.arange(len(col)), lengths), np.arange(len(flat)) - starts] = flat
        out[name] = padded
    return out


def _concat(pieces: list[np.ndarray], field) -> np.ndarray:
    import pyarrow as pa

    if not pieces:
        dtype = field.type.value_type if pa.types.is_list(field.type) else field.type
        empty = np.empty(0, dtype=dtype.to_pandas_dtype())
        return empty.reshape(0, 0) if pa.types.is_list(field.type) else empty
    if pieces[0].ndim == 1:
        return np.concatenate(pieces)
    width = max(p.shape[1] for p in pieces)
    out = np.full((sum(len(p) for p in pieces), width), PAD_ITEM, dtype=pieces[0].dtype)
    row = 0
    for piece in pieces:
        out[row:row + len(piece), :piece.shape[1]] = piece
        row += len(piece)
    return out
